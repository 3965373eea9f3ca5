//! Kafka: which partitions a job reads, the consumer of each worker, and the producer that
//! publishes after commit.
//!
//! Partitions are found once at start from the cluster's metadata: the configured bus topics
//! (exact names, or globs with `*` such as `canary.*`) and the table topics. They are numbered
//! in (topic, partition) order, so every process of a cluster numbers them alike, and
//! partition `i` belongs to worker `i % workers`: assignment is static (`assign`, no group
//! membership, no rebalancing). A record's [`Pos`] is its partition's number and its offset.
//!
//! A table topic's record carries the row's key in the Kafka key and the row (or `null`, a
//! tombstone) in the value; the source hands it to the decoder as `{"key":…,"value":…}`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError as RdError;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use ttpflow_dataflows::decode::MAX_RECORD_BYTES;
use ttpflow_dataflows::record::{Line, LineError, Pos, Table};

use crate::config::KafkaConfig;
use crate::metrics::Metrics;
use crate::postgres::Message;

/// How long the messages of one commit may take to be delivered.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a metadata or watermark request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the Kafka edge. All of them are worth a retry except a bad configuration.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("invalid Kafka client configuration")]
    Config(#[source] RdError),
    #[error("failed to read the cluster's metadata from \"{brokers}\"")]
    Metadata {
        brokers: String,
        #[source]
        source: RdError,
    },
    #[error("failed to read the watermarks of \"{topic}\" partition {partition}")]
    Watermarks {
        topic: String,
        partition: i32,
        #[source]
        source: RdError,
    },
    #[error("failed to look up the offsets of time {millis} ms")]
    OffsetsForTime {
        millis: i64,
        #[source]
        source: RdError,
    },
    #[error("failed to assign partitions to the consumer")]
    Assign(#[source] RdError),
    #[error("failed to read from Kafka")]
    Consume(#[source] RdError),
    #[error("failed to publish to \"{topic}\"")]
    Publish {
        topic: String,
        #[source]
        source: RdError,
    },
    #[error(
        "stored progress of \"{topic}\" partition {partition} ({stored}) is beyond the end of the partition ({high})"
    )]
    BeyondPartition { topic: String, partition: i32, stored: u64, high: i64 },
    #[error("none of the configured topics exists on \"{0}\"")]
    NoTopics(String),
}

/// One partition of a consumed topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition {
    pub topic: String,
    pub partition: i32,
}

/// The client settings shared by consumers and the producer: the brokers, then the
/// configured librdkafka properties (security and the rest) as given.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.brokers);
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
}

fn consumer(config: &KafkaConfig) -> Result<BaseConsumer, KafkaError> {
    consumer_config(config).create().map_err(KafkaError::Config)
}

fn consumer_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = client_config(config);
    client
        .set("group.id", &config.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    client
}

/// The context of the workers' consumers: librdkafka's statistics give each partition's
/// lag (high watermark minus the position the job has read to).
pub struct Observed {
    metrics: Option<Arc<Metrics>>,
}

impl ClientContext for Observed {
    fn stats(&self, statistics: Statistics) {
        let Some(metrics) = &self.metrics else { return };
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.hi_offset >= 0 && p.app_offset >= 0 {
                    metrics.set_lag(topic, *partition, p.hi_offset - p.app_offset);
                }
            }
        }
    }
}

impl ConsumerContext for Observed {}

/// Whether a topic name matches a configured name or glob (`*` matches any run of
/// characters, nothing else is special).
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == topic;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if topic.len() < first.len() + last.len() || !topic.starts_with(first) || !topic.ends_with(last) {
        return false;
    }
    let mut rest = &topic[first.len()..topic.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// The partitions of every configured topic that exists, in (topic, partition) order.
pub fn discover(config: &KafkaConfig) -> Result<Vec<Partition>, KafkaError> {
    let consumer = consumer(config)?;
    let metadata = consumer
        .fetch_metadata(None, METADATA_TIMEOUT)
        .map_err(|source| KafkaError::Metadata { brokers: config.brokers.clone(), source })?;
    let wanted: Vec<&String> = config.topics.iter().chain(&config.tables).collect();
    let mut partitions: Vec<Partition> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && wanted.iter().any(|p| topic_matches(p, t.name())))
        .flat_map(|t| t.partitions().iter().map(|p| Partition { topic: t.name().to_string(), partition: p.id() }))
        .collect();
    partitions.sort();
    for name in wanted.iter().filter(|n| !n.contains('*')) {
        if !partitions.iter().any(|p| &p.topic == *name) {
            tracing::warn!(topic = %name, "configured topic does not exist; it is not read until a restart");
        }
    }
    if partitions.is_empty() {
        return Err(KafkaError::NoTopics(config.brokers.clone()));
    }
    Ok(partitions)
}

/// The low and high watermarks of every partition.
pub fn watermarks(config: &KafkaConfig, partitions: &[Partition]) -> Result<Vec<(i64, i64)>, KafkaError> {
    let consumer = consumer(config)?;
    partitions
        .iter()
        .map(|p| {
            consumer
                .fetch_watermarks(&p.topic, p.partition, METADATA_TIMEOUT)
                .map_err(|source| KafkaError::Watermarks { topic: p.topic.clone(), partition: p.partition, source })
        })
        .collect()
}

/// The first offset of every partition whose record timestamp is at or after `millis`
/// (the high watermark where there is none).
pub fn offsets_for_time(config: &KafkaConfig, partitions: &[Partition], millis: i64) -> Result<Vec<u64>, KafkaError> {
    let consumer = consumer(config)?;
    let mut list = TopicPartitionList::new();
    for p in partitions {
        list.add_partition_offset(&p.topic, p.partition, Offset::Offset(millis))
            .map_err(|source| KafkaError::OffsetsForTime { millis, source })?;
    }
    let found = consumer
        .offsets_for_times(list, METADATA_TIMEOUT)
        .map_err(|source| KafkaError::OffsetsForTime { millis, source })?;
    let marks = watermarks(config, partitions)?;
    Ok(partitions
        .iter()
        .zip(marks)
        .map(|(p, (_, high))| match found.find_partition(&p.topic, p.partition).map(|e| e.offset()) {
            Some(Offset::Offset(n)) if n >= 0 => n as u64,
            _ => high.max(0) as u64,
        })
        .collect())
}

/// The consumer of one worker, over the partitions it owns.
pub struct Source {
    consumer: BaseConsumer<Observed>,
    /// Partition number by (topic, partition), for the partitions of this worker.
    numbers: BTreeMap<(String, i32), u32>,
}

impl Source {
    /// A consumer assigned to `owned`: (partition number, partition, first offset to read).
    pub fn assign(
        config: &KafkaConfig,
        owned: &[(u32, Partition, u64)],
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Source, KafkaError> {
        let mut client = consumer_config(config);
        if metrics.is_some() {
            client.set("statistics.interval.ms", "1000");
        }
        let consumer: BaseConsumer<Observed> =
            client.create_with_context(Observed { metrics }).map_err(KafkaError::Config)?;
        let mut list = TopicPartitionList::new();
        let mut numbers = BTreeMap::new();
        for (number, p, start) in owned {
            list.add_partition_offset(&p.topic, p.partition, Offset::Offset(*start as i64))
                .map_err(KafkaError::Assign)?;
            numbers.insert((p.topic.clone(), p.partition), *number);
        }
        consumer.assign(&list).map_err(KafkaError::Assign)?;
        Ok(Source { consumer, numbers })
    }

    /// The next record, if one is there within `timeout`.
    pub fn poll(&self, timeout: Duration) -> Result<Option<Line>, KafkaError> {
        match self.consumer.poll(timeout) {
            None => Ok(None),
            Some(Ok(message)) => Ok(self.line(&message)),
            Some(Err(e)) => Err(KafkaError::Consume(e)),
        }
    }

    /// The consumer's fetch position of each owned partition that has one: the offset
    /// after the last record delivered, past any gap (compaction, transaction markers).
    pub fn positions(&self) -> Vec<(u32, u64)> {
        let Ok(list) = self.consumer.position() else { return Vec::new() };
        list.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(n) if n >= 0 => {
                    self.numbers.get(&(e.topic().to_string(), e.partition())).map(|number| (*number, n as u64))
                }
                _ => None,
            })
            .collect()
    }

    fn line(&self, message: &BorrowedMessage<'_>) -> Option<Line> {
        let number = *self.numbers.get(&(message.topic().to_string(), message.partition()))?;
        let ts = message.timestamp().to_millis().unwrap_or(0);
        let pos = Pos { ts, input: number, offset: message.offset().max(0) as u64 };
        Some(record_line(pos, message.topic(), message.key(), message.payload()))
    }
}

/// The consumer group's offsets, committed for lag monitors only (`commit_group_offsets`):
/// the job's own positions are those stored with its output. The committer commits, after
/// each database commit, the positions that commit stored, for every partition of the job
/// (whichever process read it).
pub struct GroupOffsets {
    consumer: BaseConsumer,
}

impl GroupOffsets {
    /// The committer of the configured group, or `None` when `commit_group_offsets` is off.
    pub fn new(config: &KafkaConfig) -> Result<Option<GroupOffsets>, KafkaError> {
        if !config.commit_group_offsets {
            return Ok(None);
        }
        let consumer: BaseConsumer = consumer_config(config).create().map_err(KafkaError::Config)?;
        Ok(Some(GroupOffsets { consumer }))
    }

    /// Commits `next` (topic, partition, next offset); a failure is logged and the job goes on.
    pub fn commit(&self, next: &[(String, i32, u64)]) {
        if next.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for (topic, partition, offset) in next {
            if list.add_partition_offset(topic, *partition, Offset::Offset(*offset as i64)).is_err() {
                return;
            }
        }
        if let Err(e) = self.consumer.commit(&list, CommitMode::Sync) {
            tracing::warn!(error = %e, "informational group offset commit failed");
        }
    }
}

/// A Kafka record as the decoder's input: bus values as they are (the decoder takes an
/// envelope or a bare payload, with the topic from the record), table records wrapped with
/// their key.
pub fn record_line(pos: Pos, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) -> Line {
    // An oversize record is not copied: its length is all the dead letter needs.
    let size = key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len);
    if size > MAX_RECORD_BYTES {
        return Line { pos, topic: Some(topic.to_string()), text: Err(LineError::Oversize { bytes: size as u64 }) };
    }
    let text = |bytes: &[u8]| {
        std::str::from_utf8(bytes).map(str::to_string).map_err(|e| LineError::InvalidUtf8(format!("value: {e}")))
    };
    let text = if Table::from_topic(topic).is_some() {
        let key = match key.map(std::str::from_utf8) {
            None => Ok(String::from("null")),
            Some(Ok(key)) => Ok(serde_json::Value::String(key.to_string()).to_string()),
            Some(Err(e)) => Err(LineError::InvalidUtf8(format!("key: {e}"))),
        };
        let value = value.map_or(Ok(String::from("null")), text);
        key.and_then(|key| value.map(|value| format!("{{\"key\":{key},\"value\":{value}}}")))
    } else {
        value.map_or(Ok(String::new()), text)
    };
    Line { pos, topic: Some(topic.to_string()), text }
}

/// The producer of publication: idempotent, so a retried send is not written twice.
pub struct Publisher {
    producer: ThreadedProducer<DefaultProducerContext>,
}

impl Publisher {
    pub fn new(config: &KafkaConfig) -> Result<Publisher, KafkaError> {
        let mut client = client_config(config);
        client.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5");
        let producer = client.create().map_err(KafkaError::Config)?;
        Ok(Publisher { producer })
    }

    /// Sends the messages and waits until all are delivered.
    pub fn publish(&self, messages: &[Message]) -> Result<(), KafkaError> {
        for message in messages {
            let mut record = BaseRecord::<str, [u8]>::to(&message.topic).key(message.key.as_str());
            if let Some(value) = &message.value {
                record = record.payload(value.as_slice());
            }
            let mut record = record;
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((RdError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err((source, _)) => return Err(KafkaError::Publish { topic: message.topic.clone(), source }),
                }
            }
        }
        // rdkafka's flush waits for deliveries in steps of 100 ms; with a polling thread
        // doing the polling, looking every millisecond returns as soon as they are in.
        let deadline = std::time::Instant::now() + FLUSH_TIMEOUT;
        while self.producer.in_flight_count() > 0 {
            if std::time::Instant::now() > deadline {
                let source = RdError::Flush(rdkafka::types::RDKafkaErrorCode::OperationTimedOut);
                return Err(KafkaError::Publish { topic: String::from("(flush)"), source });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_topics() {
        assert!(topic_matches("canary.*", "canary.tok1.triggered"));
        assert!(topic_matches("canary.*.triggered", "canary.tok1.triggered"));
        assert!(!topic_matches("canary.*.triggered", "canary.tok1.placed"));
        assert!(topic_matches("attacker.observed", "attacker.observed"));
        assert!(!topic_matches("attacker.observed", "attacker.observed2"));
        assert!(!topic_matches("canary.*", "canary"));
        assert!(topic_matches("*", "anything"));
    }

    #[test]
    fn security_settings_pass_through_to_librdkafka() {
        let mut config = KafkaConfig::default();
        for (key, value) in [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "ttpflow"),
            ("sasl.password", "secret"),
        ] {
            config.properties.insert(key.into(), value.into());
        }
        // Creating a client validates the settings without connecting.
        assert!(consumer(&config).is_ok());
        config.properties.insert("security.protocol".into(), "carrier_pigeon".into());
        let err = consumer(&config).err().expect("an unknown protocol is refused");
        assert!(err.to_string().contains("invalid Kafka client configuration"), "{err}");
    }

    #[test]
    fn table_records_carry_their_key() {
        let pos = Pos { ts: 0, input: 3, offset: 9 };
        let line = record_line(pos, "decnet.attackers", Some(b"a\"1"), Some(br#"{"uuid":"a1"}"#));
        assert_eq!(line.text.unwrap(), r#"{"key":"a\"1","value":{"uuid":"a1"}}"#);
        let tombstone = record_line(pos, "decnet.attackers", Some(b"a1"), None);
        assert_eq!(tombstone.text.unwrap(), r#"{"key":"a1","value":null}"#);
        let bus = record_line(pos, "attacker.observed", None, Some(b"{\"attacker_ip\":\"1.2.3.4\"}"));
        assert_eq!(bus.text.unwrap(), "{\"attacker_ip\":\"1.2.3.4\"}");
        assert_eq!(bus.topic.as_deref(), Some("attacker.observed"));
        let bad = record_line(pos, "attacker.observed", None, Some(&[0xff, 0xfe]));
        assert!(matches!(bad.text, Err(LineError::InvalidUtf8(ref d)) if d.starts_with("value: ")));
    }
}
