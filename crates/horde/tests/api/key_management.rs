//! Key management (issue 32, point 4): an owner finds their shared keys by handle in
//! `sharedkey_ids` (the keys themselves are stored only as salted hashes), and changes and
//! deletes them through `/sharedkeys/{handle}`; a handle never authenticates a request.

use crate::helpers::*;
use horde_api::shared_key::SharedKeyPatch;
use serde_json::json;

#[tokio::test]
async fn an_owner_lists_changes_and_deletes_shared_keys_by_handle() {
    let app = spawn_app().await;
    let (owner, owner_id) = app.user("lender", 100.0).await;
    let (other, _) = app.user("other", 0.0).await;
    let mut keys = vec![];
    for name in ["first key", "second key"] {
        let input = serde_json::from_value(json!({"name": name, "kudos": 10})).unwrap();
        keys.push(owner.create_shared_key(&input).await.unwrap().id);
    }
    let handles = owner.find_user().await.unwrap().sharedkey_ids.unwrap();
    assert_eq!(handles.len(), 2);
    assert!(handles.iter().all(|h| h.len() == 64 && !keys.contains(h)));
    assert_eq!(
        other.user(owner_id as u64).await.unwrap().sharedkey_ids,
        None,
        "only the owner and moderators see them"
    );

    let mut by_name = std::collections::BTreeMap::new();
    for handle in &handles {
        let details = owner.shared_key(handle).await.unwrap();
        assert_eq!(&details.id, handle);
        by_name.insert(details.name, handle.clone());
    }
    let first = by_name["first key"].clone();
    let patch = SharedKeyPatch {
        kudos: Some(25),
        name: Some("renamed key".into()),
        ..SharedKeyPatch::default()
    };
    let refused = other.modify_shared_key(&first, &patch).await.unwrap_err();
    assert_eq!(refused.rc(), Some("NotOwner"));
    let changed = owner.modify_shared_key(&first, &patch).await.unwrap();
    assert_eq!((changed.name.as_str(), changed.kudos), ("renamed key", 25));
    // The key itself sees the change: the handle named the same key.
    let through_key = app.anonymous().shared_key(&keys[0]).await.unwrap();
    assert_eq!(
        (through_key.name.as_str(), through_key.kudos),
        ("renamed key", 25)
    );

    // A handle is no key: a request made with it is refused.
    let (status, answer) = call_as(
        &app,
        &first,
        "POST",
        "/api/v2/generate/async",
        Some(json!({"prompt": "with a handle", "params": {"steps": 10}})),
    )
    .await;
    assert_eq!(
        (status, &answer["rc"]),
        (401, &json!("InvalidAPIKey")),
        "{answer}"
    );

    owner.delete_shared_key(&first).await.unwrap();
    let gone = app.anonymous().shared_key(&keys[0]).await.unwrap_err();
    assert_eq!(gone.rc(), Some("SharedKeyInvalid"));
    assert_eq!(
        owner
            .find_user()
            .await
            .unwrap()
            .sharedkey_ids
            .unwrap()
            .len(),
        1
    );
    app.stop().await;
}
