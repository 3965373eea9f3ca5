//! Integration tests: one binary, one module per area.

mod artifacts;
mod common;
mod detection;
mod fuzz;
mod generate;
mod kafka;
mod pipeline;
mod postgres;
mod privacy;
mod regression;
mod rollups;
mod rules_pack;
mod schemas;
mod windows;
