//! A librdkafka mock cluster loaded with JSONL corpora, for trying and measuring the Kafka
//! job without a broker: `cargo run --release --example mock_cluster -- FILE.jsonl…`.
//!
//! Every line goes to the topic it names: bus envelopes as they are, table records
//! (`{"topic":"decnet.…","key","value"}`) keyed by their key, with their row (or a
//! tombstone) as the value. Bus records are spread over `--partitions` partitions by
//! attacker IP (the mock cluster keeps at most 5 MiB per partition); `--topic NAME:N`
//! creates a topic of N partitions up front. The bootstrap servers are printed once
//! everything is produced; the cluster lives until standard input closes. Run with
//! `--topic` only, it is a broker program for the Kafka tests (`TTPFLOW_TEST_KAFKA_BROKER`).
//!
//! `--pace N` produces the table records, prints the bootstrap servers, waits
//! `--pace-delay-s` seconds (default 5, for a job to start) and then produces the bus
//! records at N per second, each stamped with the time it is sent: a live load for
//! measuring the job's latency (`benches/latency.sh`).

use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut partitions = 4;
    let mut pace: Option<f64> = None;
    let mut pace_delay = 5.0;
    let mut files = Vec::new();
    let mut topics: BTreeMap<String, i32> = BTreeMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--partitions" => partitions = args.next().ok_or("--partitions needs a number")?.parse()?,
            "--pace" => pace = Some(args.next().ok_or("--pace needs records per second")?.parse()?),
            "--pace-delay-s" => pace_delay = args.next().ok_or("--pace-delay-s needs seconds")?.parse()?,
            "--topic" => {
                let spec = args.next().ok_or("--topic needs NAME:PARTITIONS")?;
                let (name, n) = spec.rsplit_once(':').ok_or("--topic needs NAME:PARTITIONS")?;
                topics.insert(name.to_string(), n.parse()?);
            }
            _ => files.push(arg),
        }
    }
    let mut records: Vec<(String, i32, Option<String>, Option<String>)> = Vec::new();
    for file in &files {
        for line in std::io::BufReader::new(std::fs::File::open(file)?).lines() {
            let line = line?;
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            let Some(topic) = value["topic"].as_str().map(str::to_string) else { continue };
            if topic.starts_with("decnet.") {
                let key = value["key"].as_str().map_or_else(|| value["key"].to_string(), str::to_string);
                let row = (!value["value"].is_null()).then(|| value["value"].to_string());
                topics.entry(topic.clone()).or_insert(1);
                records.push((topic, 0, Some(key), row));
            } else {
                let ip = value["payload"]["attacker_ip"].as_str().unwrap_or("").to_string();
                let hash = ip.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
                let n = *topics.entry(topic.clone()).or_insert(partitions);
                records.push((topic, (hash % n as u32) as i32, (!ip.is_empty()).then_some(ip), Some(line)));
            }
        }
    }
    let mock = MockCluster::new(1)?;
    for (topic, n) in &topics {
        mock.create_topic(topic, *n, 1)?;
    }
    let brokers = mock.bootstrap_servers();
    let producer: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", &brokers).set("linger.ms", "5").create()?;
    let send = |(topic, partition, key, value): &(String, i32, Option<String>, Option<String>)| {
        let mut record = BaseRecord::<str, str>::to(topic).partition(*partition);
        if let Some(key) = key {
            record = record.key(key.as_str());
        }
        if let Some(value) = value {
            record = record.payload(value.as_str());
        }
        while let Err((_, back)) = producer.send(record) {
            record = back;
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let Some(rate) = pace else {
        records.iter().for_each(send);
        producer.flush(Duration::from_secs(120))?;
        eprintln!("produced {} records to {} topics", records.len(), topics.len());
        println!("{brokers}");
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        return Ok(());
    };
    let (tables, bus): (Vec<_>, Vec<_>) = records.iter().partition(|r| r.0.starts_with("decnet."));
    tables.into_iter().for_each(send);
    producer.flush(Duration::from_secs(120))?;
    println!("{brokers}");
    std::thread::sleep(Duration::from_secs_f64(pace_delay));
    let start = Instant::now();
    for (i, record) in bus.iter().enumerate() {
        let due = Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        send(record);
    }
    producer.flush(Duration::from_secs(120))?;
    let took = start.elapsed().as_secs_f64();
    eprintln!("paced {} records in {took:.1} s ({:.0}/s)", bus.len(), bus.len() as f64 / took);
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}
