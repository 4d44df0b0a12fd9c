//! The client library used from glommio (the broker's own runtime), through
//! `levee_client::remote`, against a real broker: produce, then consume
//! every message back, from inside a glommio executor.

mod common;

use common::Broker;
use levee_client::remote::RemoteClient;
use levee_client::{ClientConfig, ConsumerConfig, ProducerConfig, StartPosition, TopicSettings};

#[test]
fn produce_and_consume_from_a_glommio_executor() {
    let b = Broker::start_with("glommio-client", &["--cores", "1"]);
    let client = RemoteClient::connect(ClientConfig::new([b.bootstrap()]), 1).unwrap();
    let got = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            client
                .run(|c| async move {
                    c.create_topic(
                        "from-glommio",
                        &TopicSettings {
                            partitions: 3,
                            ..Default::default()
                        },
                    )
                    .await
                })
                .await
                .unwrap();
            let producer = client.producer(ProducerConfig::default()).unwrap();
            // Sends are queued in call order; the reports are awaited later.
            let reports: Vec<_> = (0..300)
                .map(|i| producer.send("from-glommio", None, format!("m{i}").into_bytes()))
                .collect();
            for r in reports {
                r.await.unwrap();
            }
            producer.flush().await.unwrap();
            let consumer = client.consumer(ConsumerConfig::default());
            consumer
                .assign("from-glommio", None, StartPosition::Earliest)
                .await
                .unwrap();
            let mut got = Vec::new();
            while got.len() < 300 {
                for r in consumer.poll().await.unwrap() {
                    got.push(String::from_utf8(r.value.unwrap_or_default()).unwrap());
                }
            }
            got
        })
        .unwrap()
        .join()
        .unwrap();
    let mut want: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    let mut sorted = got.clone();
    sorted.sort();
    want.sort();
    assert_eq!(sorted, want, "every message exactly once");
}
