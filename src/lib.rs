//! ttpflow: honeypot fleet events to MITRE ATT&CK technique tags, on differential dataflow.
//!
//! This crate is everything that touches the outside world: the command line and its
//! configuration, the rule loader, file sources and sinks, the synthetic fleet generator, the Kafka source and publisher,
//! the PostgreSQL sink, metrics, and the runtimes that drive timely workers. The graph
//! itself lives in the `ttpflow-dataflows` crate.

pub mod artifacts;
pub mod cli;
pub mod config;
pub mod files;
pub mod generate;
pub mod intel_tables;
pub mod kafka;
pub mod metrics;
pub mod navigator;
pub mod postgres;
pub mod publish;
pub mod reload;
pub mod rollup_table;
pub mod rules;
pub mod runtime;
pub mod secret_key;
pub mod stage_times;
pub mod stream;
