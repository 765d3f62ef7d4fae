//! `max_concurrency = "auto"` against test servers that refuse what is beyond their capacity:
//! the server's capacity itself, and real `cai run` jobs that find it.

use std::time::Duration;

use cai_tests::harness::wait_until;
use cai_tests::model_server::{ModelServer, ServerConfig};
use serde_json::json;

/// Posts a chat request, returning the status.
async fn post(client: &reqwest::Client, url: &str, text: &str) -> u16 {
    client
        .post(format!("{url}/chat/completions"))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .expect("the server answers")
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_test_server_refuses_what_arrives_beyond_its_capacity_with_a_429() {
    let server = ModelServer::start(ServerConfig {
        capacity: Some(2),
        latency: Duration::from_millis(500),
        ..ServerConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let url = server.url();
    let served = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move {
            tokio::join!(
                post(&client, &url, "one"),
                post(&client, &url, "two")
            )
        }
    });
    wait_until(Duration::from_secs(10), "two requests are in flight", || {
        server.calls().len() == 2
    })
    .await;
    assert_eq!(post(&client, &url, "three").await, 429);
    assert_eq!(served.await.unwrap(), (200, 200));
    assert_eq!(post(&client, &url, "four").await, 200);

    let faults: Vec<Option<&str>> = server.calls().iter().map(|call| call.fault).collect();
    assert_eq!(faults, [None, None, Some("capacity"), None]);
    assert_eq!(server.over_capacity(), 1);
    // The refused request was not served, so it is no repeat when it comes again.
    assert_eq!(post(&client, &url, "three").await, 200);
    assert_eq!(server.counts(), (5, 0));
}
