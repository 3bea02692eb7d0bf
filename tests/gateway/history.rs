//! Room history and recovery (SPEC §11), local mode.

use crate::common;

use common::{TestConfig, TestGateway};
use serde_json::json;

fn cfg(history_size: usize) -> TestConfig {
    TestConfig::tenant("acme")
        .api_key("acme-key-0123456789")
        .tickets(&[("t1", "u1"), ("t2", "u2"), ("t3", "u3")])
        .ext_allow(&["room:*", "chat:*"])
        .policy(|p| p.rate_limit_burst = 1000)
        .rooms(|r| {
            r.history_size = history_size;
            r.history_ttl_ms = 600_000;
        })
}

async fn say(c: &mut common::Client, text: &str) {
    c.send_json(json!({"v":1,"svc":"chat","type":"send","room":"r","data":{"msg":text}}))
        .await;
}

#[tokio::test]
async fn reliable_publications_carry_offsets_and_recover_after_a_gap() {
    let gw = TestGateway::start(cfg(5)).await;
    let mut a = gw.client("acme", "t1").await;
    let mut b = gw.client("acme", "t2").await;
    let ja = a.join("r").await;
    assert_eq!(ja["data"]["offset"], 0);
    let epoch = ja["data"]["epoch"].as_str().expect("epoch").to_owned();
    b.join("r").await;

    say(&mut a, "one").await;
    let m1 = b.recv_type("msg").await;
    assert_eq!(m1["offset"], 1);
    assert_eq!(m1["epoch"], epoch.as_str());
    // b goes away; the room keeps publishing.
    drop(b);
    for t in ["two", "three", "four"] {
        say(&mut a, t).await;
    }
    for _ in 0..4 {
        a.recv_type("msg").await;
    }
    // API publications count too; lossy ones are not recorded.
    let api = reqwest::Client::new();
    for qos in ["reliable", "lossy"] {
        let r = api
            .post(gw.admin_url("/v1/api/tenants/acme/publish"))
            .bearer_auth("acme-key-0123456789")
            .json(&json!({"room":"r","svc":"news","type":"n","data":qos,"qos":qos}))
            .send()
            .await
            .expect("publish");
        assert_eq!(r.status().as_u16(), 200);
    }
    let rel = a.recv_type("n").await;
    assert_eq!(rel["offset"], 5);
    let lossy = a.recv_type("n").await;
    assert!(lossy.get("offset").is_none(), "{lossy}");

    let mut b = gw.client("acme", "t2").await;
    let frames = b
        .join_since("r", json!({"epoch": epoch, "offset": 1}))
        .await;
    let offsets: Vec<u64> = frames.iter().filter_map(|f| f["offset"].as_u64()).collect();
    assert_eq!(offsets, vec![2, 3, 4, 5]);
    assert_eq!(frames[0]["data"]["msg"], "two");
    let joined = frames.last().expect("joined");
    assert_eq!(joined["data"]["recovered"], true);
    assert_eq!(joined["data"]["offset"], 5);

    // Up to date: nothing to replay, still recovered.
    let mut c = gw.client("acme", "t3").await;
    let frames = c
        .join_since("r", json!({"epoch": epoch, "offset": 5}))
        .await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["data"]["recovered"], true);
}

#[tokio::test]
async fn gaps_that_cannot_be_filled_report_recovered_false() {
    let gw = TestGateway::start(cfg(3)).await;
    let mut a = gw.client("acme", "t1").await;
    let epoch = a.join("r").await["data"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    for i in 0..6 {
        say(&mut a, &format!("m{i}")).await;
        a.recv_type("msg").await;
    }
    let mut b = gw.client("acme", "t2").await;
    // Trimmed: only offsets 4..6 are retained.
    let frames = b
        .join_since("r", json!({"epoch": epoch, "offset": 1}))
        .await;
    assert_eq!(
        frames.len(),
        1,
        "nothing is replayed when the gap cannot be filled"
    );
    assert_eq!(frames[0]["data"]["recovered"], false);
    let mut c = gw.client("acme", "t3").await;
    let frames = c
        .join_since("r", json!({"epoch": "another-epoch", "offset": 5}))
        .await;
    assert_eq!(frames[0]["data"]["recovered"], false);
    // A malformed position is a bad request.
    c.send_json(
        json!({"v":1,"svc":"room","type":"join","room":"r","seq":3,"data":{"since":{"epoch":1}}}),
    )
    .await;
    assert_eq!(c.recv_type("error").await["data"]["code"], "BAD_REQUEST");
}

#[tokio::test]
async fn without_history_nothing_is_recorded_or_recovered() {
    let gw = TestGateway::start(cfg(0)).await;
    let mut a = gw.client("acme", "t1").await;
    let j = a.join("r").await;
    assert!(j["data"].get("epoch").is_none());
    say(&mut a, "x").await;
    assert!(a.recv_type("msg").await.get("offset").is_none());
    let mut b = gw.client("acme", "t2").await;
    let frames = b.join_since("r", json!({"epoch": "e", "offset": 0})).await;
    assert_eq!(frames[0]["data"]["recovered"], false);
}
