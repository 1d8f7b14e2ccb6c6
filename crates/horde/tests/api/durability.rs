//! Durability: what the coordinator acknowledged survives `kill -9` and a restart.

use crate::helpers::*;

#[tokio::test]
async fn acknowledged_requests_and_results_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--enable-test-users",
        "--no-rate-limits",
    ];
    let server = ServerProcess::start(dir.path(), &args, &[]);
    let requester = server.trusted_user("requester", 100.0).await;
    let owner = server.trusted_user("owner", 100.0).await;

    let r2_id = requester
        .generate_async(&small_request("survive r2", 1, true))
        .await
        .unwrap()
        .id
        .unwrap();
    let id = requester
        .generate_async(&small_request("survive", 3, false))
        .await
        .unwrap()
        .id
        .unwrap();
    let r2_job = owner.pop(&pop_request("w1")).await.unwrap();
    assert_eq!(r2_job.payload["prompt"], "survive r2");
    owner
        .upload(
            r2_job.r2_upload.as_deref().unwrap(),
            webp(512, 512, [0, 200, 0], [0, 200, 0]),
        )
        .await
        .unwrap();
    owner
        .submit(&submit_with(&r2_job, Some("R2".into())))
        .await
        .unwrap();
    let first = owner.pop(&pop_request("w1")).await.unwrap();
    owner
        .submit(&submit_inline(
            &first,
            &webp(512, 512, [200, 0, 0], [0, 0, 200]),
        ))
        .await
        .unwrap();
    let in_flight = owner.pop(&pop_request("w1")).await.unwrap();
    assert_eq!(in_flight.payload["prompt"], "survive");
    let paid = requester.find_user().await.unwrap().kudos;
    let earned = owner.find_user().await.unwrap().kudos;

    server.kill_9();
    let server = ServerProcess::start(dir.path(), &args, &[]);
    let requester = requester.with_base_url(&server.root);
    let owner = owner.with_base_url(&server.root);

    let check = requester
        .check(&id)
        .await
        .expect("the accepted request is still there");
    assert_eq!((check.finished, check.processing, check.waiting), (1, 1, 1));
    let status = requester.status(&id).await.unwrap();
    let (_, top, bottom) = halves_of(&base64_decode(&status.generations[0].img));
    assert_eq!(
        (top, bottom),
        ([200, 0, 0], [0, 0, 200]),
        "the accepted image survived"
    );
    let r2_status = requester.status(&r2_id).await.unwrap();
    assert!(r2_status.check.done);
    let (_, top, _) = halves_of(
        &requester
            .download(&r2_status.generations[0].img)
            .await
            .unwrap(),
    );
    assert_eq!(top, [0, 200, 0]);
    assert_eq!(
        requester.find_user().await.unwrap().kudos,
        paid,
        "kudos moves survived"
    );
    assert_eq!(owner.find_user().await.unwrap().kudos, earned);

    // The job in flight at the crash can still be delivered, and the last one handed out.
    owner
        .submit(&submit_inline(
            &in_flight,
            &webp(512, 512, [1, 1, 1], [1, 1, 1]),
        ))
        .await
        .unwrap();
    let last = owner.pop(&pop_request("w1")).await.unwrap();
    owner
        .submit(&submit_inline(&last, &webp(512, 512, [2, 2, 2], [2, 2, 2])))
        .await
        .unwrap();
    let done = requester.check(&id).await.unwrap();
    assert!(done.done && done.finished == 3, "{done:?}");
}
