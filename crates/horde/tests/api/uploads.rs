//! Upload URLs (`r2_upload`): served by the coordinator, signed, single-use, expiring, and
//! taking only decodable images within the size limit.

use crate::helpers::*;

fn expect_refused(result: Result<(), horde_client::ClientError>, status: u16, rc: &str) {
    let err = result.expect_err("the upload must be refused");
    assert_eq!(err.status().map(|s| s.as_u16()), Some(status), "{err}");
    assert_eq!(err.rc(), Some(rc), "{err}");
}

#[tokio::test]
async fn an_upload_url_takes_one_valid_image_once() {
    let app = spawn_app_with(|c| c.api.max_image_bytes = 64 * 1024).await;
    let (requester, _) = app.user("requester", 100.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    requester
        .generate_async(&small_request("uploads", 1, true))
        .await
        .unwrap();
    let popped = owner.pop(&pop_request("w1")).await.unwrap();
    let url = popped.r2_upload.clone().unwrap();

    // Submitting "R2" before anything was uploaded is refused, and the job stays open.
    let early = owner
        .submit(&submit_with(&popped, Some("R2".into())))
        .await
        .unwrap_err();
    assert_eq!(early.rc(), Some("ImageValidationFailed"));

    let tampered = url.replace("sig=", "sig=00");
    expect_refused(
        owner
            .upload(&tampered, webp(512, 512, [1; 3], [2; 3]))
            .await,
        403,
        "Forbidden",
    );
    let noisy = noisy_webp(512, 512);
    assert!(noisy.len() > 64 * 1024);
    expect_refused(owner.upload(&url, noisy).await, 413, "PayloadTooLarge");
    expect_refused(
        owner.upload(&url, b"GIF89a not webp".to_vec()).await,
        400,
        "ImageValidationFailed",
    );

    owner
        .upload(&url, webp(512, 512, [10, 20, 30], [40, 50, 60]))
        .await
        .unwrap();
    expect_refused(
        owner.upload(&url, webp(512, 512, [0; 3], [0; 3])).await,
        409,
        "UploadAlreadyUsed",
    );
    owner
        .submit(&submit_with(&popped, Some("R2".into())))
        .await
        .unwrap();
    let status_id = requester.find_user().await.unwrap();
    assert_eq!(status_id.records.request.image, 1);
    // After the submit the URL is dead for good.
    expect_refused(
        owner.upload(&url, webp(512, 512, [0; 3], [0; 3])).await,
        404,
        "InvalidJobID",
    );
    app.stop().await;
}

#[tokio::test]
async fn an_expired_upload_url_is_refused() {
    let app = spawn_app_with(|c| c.requests.upload_url_ttl_secs = -1).await;
    let (requester, _) = app.user("requester", 100.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    requester
        .generate_async(&small_request("late", 1, true))
        .await
        .unwrap();
    let popped = owner.pop(&pop_request("w1")).await.unwrap();
    let url = popped.r2_upload.clone().unwrap();
    expect_refused(
        owner.upload(&url, webp(512, 512, [1; 3], [2; 3])).await,
        403,
        "Forbidden",
    );
    app.stop().await;
}
