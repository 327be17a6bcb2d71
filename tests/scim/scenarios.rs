//! Behaviour every conforming target must show; run against the dev-target and the peer.
use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};
use roster::scim::{
    Deleted, ErrorClass, ListQuery, PatchRequest, ScimClient, filter, id_of, version_of,
};
use serde_json::json;

use crate::helpers::{Calls, group, ids, unique, user};

pub async fn users_crud(client: &ScimClient) {
    let users = client.users();
    let name = unique("crud");
    let created = users.create(&user(&name)).await.unwrap();
    let id = id_of(&created).unwrap().to_owned();
    assert_eq!(created["userName"], name);

    let fetched = users.get(&id).await.unwrap();
    assert_eq!(fetched["userName"], name);

    let found = users
        .find_by("userName", &name.to_uppercase())
        .await
        .unwrap();
    assert_eq!(
        ids(&found),
        std::slice::from_ref(&id),
        "userName look-up ignores case"
    );

    let mut replacement = user(&name);
    replacement["title"] = json!("Chair");
    let replaced = users.replace(&id, &replacement).await.unwrap();
    assert_eq!(replaced["title"], "Chair");

    let patched = users
        .patch(
            &id,
            &PatchRequest::new().replace_value(json!({"active": false, "title": "Emerita"})),
        )
        .await
        .unwrap();
    if let Some(body) = patched {
        assert_eq!(body["active"], false);
    }
    let after = users.get(&id).await.unwrap();
    assert_eq!(after["active"], false);
    assert_eq!(after["title"], "Emerita");

    let patched = users
        .patch(&id, &PatchRequest::new().replace("active", json!(true)))
        .await
        .unwrap();
    let _ = patched;
    assert_eq!(users.get(&id).await.unwrap()["active"], true);

    assert_eq!(users.delete(&id).await.unwrap(), Deleted::Deleted);
    assert_eq!(users.delete(&id).await.unwrap(), Deleted::AlreadyGone);
    let err = users.get(&id).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound, "{err}");
    assert_eq!(err.status(), Some(404));
}

pub async fn groups_membership(client: &ScimClient) {
    let mut members = Vec::new();
    for _ in 0..3 {
        let created = client
            .users()
            .create(&user(&unique("member")))
            .await
            .unwrap();
        members.push(id_of(&created).unwrap().to_owned());
    }
    let groups = client.groups();
    let created = groups.create(&group(&unique("group"))).await.unwrap();
    let gid = id_of(&created).unwrap().to_owned();

    groups.add_members(&gid, &members).await.unwrap();
    let member_ids = |g: &serde_json::Value| -> HashSet<String> {
        g["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|v| v["value"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let fetched = groups.get(&gid).await.unwrap();
    assert_eq!(member_ids(&fetched), members.iter().cloned().collect());

    groups.remove_members(&gid, &members[..1]).await.unwrap();
    let fetched = groups.get(&gid).await.unwrap();
    assert_eq!(member_ids(&fetched), members[1..].iter().cloned().collect());

    let renamed = groups
        .patch(
            &gid,
            &PatchRequest::new().replace("displayName", json!("renamed")),
        )
        .await
        .unwrap();
    let _ = renamed;
    assert_eq!(groups.get(&gid).await.unwrap()["displayName"], "renamed");

    assert_eq!(groups.delete(&gid).await.unwrap(), Deleted::Deleted);
    for id in &members {
        client.users().delete(id).await.unwrap();
    }
}

/// userNames that would break out of a naively built filter each find exactly their user.
pub async fn hostile_filters(client: &ScimClient) {
    let suffix = unique("");
    let hostile = [
        format!("a\"b{suffix}"),
        format!("x{suffix}) or (userName pr"),
        format!("back\\slash{suffix}"),
        format!("q{suffix}\" or \"1\" eq \"1"),
        format!("sp ace+plus&amp{suffix}"),
    ];
    let mut created = Vec::new();
    for name in &hostile {
        let u = client.users().create(&user(name)).await.unwrap();
        created.push(id_of(&u).unwrap().to_owned());
    }
    for (name, id) in hostile.iter().zip(&created) {
        let found = client.users().find_by("userName", name).await.unwrap();
        assert_eq!(ids(&found), std::slice::from_ref(id), "look-up of {name:?}");
    }
    let none = client
        .users()
        .find_by("userName", &format!("nobody{suffix}\""))
        .await
        .unwrap();
    assert!(none.is_empty());
    for id in &created {
        client.users().delete(id).await.unwrap();
    }
}

/// Creates `n` users named `prefix-i` with at most `concurrency` requests in flight.
pub async fn create_users(
    client: &ScimClient,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> Vec<String> {
    futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            let name = format!("{prefix}-{i:04}");
            async move {
                id_of(&client.users().create(&user(&name)).await.unwrap())
                    .unwrap()
                    .to_owned()
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Lists `prefix*` users with `page_size`, checking count and uniqueness.
pub async fn list_prefix(client: &ScimClient, prefix: &str, page_size: u32) -> Vec<String> {
    let query = ListQuery {
        filter: Some(format!("userName sw {}", filter::json_string(prefix))),
        attributes: vec!["userName".into()],
        page_size,
        overlapping: false,
    };
    let listed: Vec<serde_json::Value> = client
        .users()
        .list_query(query)
        .try_collect()
        .await
        .unwrap();
    let listed = ids(&listed);
    let unique: HashSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "no duplicates");
    listed
}

/// A stale `meta.version` on PUT gets 412, and the client does not send the stale body again
/// with the new version: the other writer's change survives.
pub async fn etag_retry(client: &ScimClient, calls: &Calls) {
    let users = client.users();
    let created = users.create(&user(&unique("etag"))).await.unwrap();
    let id = id_of(&created).unwrap().to_owned();
    let stale = created.clone();
    // Someone else changes it: the version moves on.
    let _ = users
        .patch(&id, &PatchRequest::new().replace("title", json!("moved")))
        .await
        .unwrap();
    let current = users.get(&id).await.unwrap();
    assert_ne!(
        version_of(&current),
        version_of(&stale),
        "version changes on write"
    );

    calls.clear();
    let mut update = stale.clone();
    update["displayName"] = json!("after 412");
    let err = users.replace(&id, &update).await.unwrap_err();
    assert_eq!(err.status(), Some(412), "{err}");
    assert_eq!(calls.summary(), ["PUT 412"]);
    let now = users.get(&id).await.unwrap();
    assert_eq!(now["title"], "moved", "the other writer's change survives");
    users.delete(&id).await.unwrap();
}

/// A stale `If-Match` on PATCH gets 412, returned to the caller (who built the PATCH from the
/// old copy) instead of sent again with the new version.
pub async fn etag_patch_retry(client: &ScimClient, calls: &Calls) {
    let users = client.users();
    let created = users.create(&user(&unique("etag-patch"))).await.unwrap();
    let id = id_of(&created).unwrap().to_owned();
    let stale = created.clone();
    let _ = users
        .patch(&id, &PatchRequest::new().replace("title", json!("moved")))
        .await
        .unwrap();
    calls.clear();
    let stale_patch = PatchRequest::new()
        .replace("title", json!("patched"))
        .if_match(version_of(&stale).unwrap());
    let err = users.patch(&id, &stale_patch).await.unwrap_err();
    assert_eq!(err.status(), Some(412), "{err}");
    assert_eq!(calls.summary(), ["PATCH 412"]);
    assert_eq!(users.get(&id).await.unwrap()["title"], "moved");
    users.delete(&id).await.unwrap();
}

pub async fn conflicts_and_missing(client: &ScimClient) {
    let name = unique("dup");
    let created = client.users().create(&user(&name)).await.unwrap();
    let err = client
        .users()
        .create(&user(&name.to_uppercase()))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Conflict, "{err}");
    assert_eq!(err.status(), Some(409));
    assert_eq!(err.scim_type(), Some("uniqueness"));
    let err = client.users().get("no-such-id").await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound);
    let err = client
        .users()
        .patch(
            "no-such-id",
            &PatchRequest::new().replace("active", json!(false)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    client
        .users()
        .delete(id_of(&created).unwrap())
        .await
        .unwrap();
}

/// Concurrent matching look-ups merged by delivery's `LookupBatcher`: one listing answers all
/// of them, each finds exactly what its own `find_by` finds (hostile names included), and the
/// names that match nobody find nothing.
pub async fn merged_lookups(client: &ScimClient, calls: &Calls) {
    use roster::delivery::lookups::LookupBatcher;
    use std::sync::Arc;
    let suffix = unique("");
    let present = [
        format!("merged-a{suffix}"),
        format!("merged-b{suffix}\" or userName pr or \"x\" eq \"x"),
        format!("Merged-C{suffix}"),
    ];
    let mut created = Vec::new();
    for name in &present {
        let u = client.users().create(&user(name)).await.unwrap();
        created.push(id_of(&u).unwrap().to_owned());
    }
    // Asked as delivery renders them: the first and third in another case.
    let asked: Vec<String> = vec![
        present[0].to_uppercase(),
        present[1].clone(),
        present[2].to_lowercase(),
        format!("merged-nobody{suffix}"),
        format!("merged-none\\{suffix}"),
    ];
    calls.clear();
    let batcher = Arc::new(LookupBatcher::default());
    let found = crate::helpers::find_all(&batcher, client, &asked).await;
    assert_eq!(
        calls.listing_statuses(),
        [Some(200)],
        "one listing for five look-ups: {:?}",
        calls.summary()
    );
    for (i, id) in created.iter().enumerate() {
        let got = found[i].as_ref().unwrap();
        assert_eq!(
            ids(got),
            std::slice::from_ref(id),
            "look-up of {:?}",
            asked[i]
        );
    }
    assert!(found[3].as_ref().unwrap().is_empty());
    assert!(found[4].as_ref().unwrap().is_empty());
    // The same values started ahead, as the engine starts them at each job's claim where the
    // app's calls are plenty: the first leaves alone, the rest with the next batch; each job
    // takes exactly what its own look-up found.
    let batcher = Arc::new(LookupBatcher::new(32));
    let aheads: Vec<_> = asked
        .iter()
        .map(|value| {
            batcher
                .look_ahead(
                    client,
                    "userName",
                    value,
                    tracing::Span::none(),
                    roster::delivery::execute::job_call_context(),
                    false,
                )
                .expect("merged")
        })
        .collect();
    for ((value, ahead), own) in asked.iter().zip(aheads).zip(&found) {
        let taken = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            batcher.find_or_take(client, "userName", value, Some(ahead)),
        )
        .await
        .expect("a look-up started ahead leaves")
        .unwrap();
        assert_eq!(
            ids(&taken.accounts),
            ids(own.as_ref().unwrap()),
            "started ahead: {value:?}"
        );
    }
    for id in &created {
        client.users().delete(id).await.unwrap();
    }
}
