//! Time per stage: how long each worker spent inside each top-level operator of the graph.
//!
//! A timely logger on every worker pairs the start and stop of each operator's scheduling
//! and sums the time of the dataflow's top-level operators: the stage regions (`decode`,
//! `anchor`, …, whose time includes everything inside them), the sinks and the exchange
//! of the input. The sums of all workers add up into one table, in CPU seconds: a stage
//! that took 2 s on each of two workers reports 4 s. Time outside every operator (reading
//! the input, progress tracking, waiting) is what the elapsed time of the run leaves over.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use timely::logging::{StartStop, TimelyEvent, TimelyEventBuilder};

/// The totals of all workers, by operator name.
#[derive(Clone, Default)]
pub struct StageTimes(Arc<Mutex<BTreeMap<String, Duration>>>);

impl StageTimes {
    /// Starts summing the stage times of `worker`; call it before building the dataflow.
    pub fn install(&self, worker: &mut timely::worker::Worker) {
        let Some(mut registry) = worker.log_register() else { return };
        let mut local = Local::new(self.clone());
        registry.insert::<TimelyEventBuilder, _>("timely", move |_now, events| {
            if let Some(events) = events {
                for (at, event) in events.drain(..) {
                    local.observe(at, event);
                }
            }
        });
    }

    /// The totals, largest first.
    pub fn totals(&self) -> Vec<(String, Duration)> {
        let mut totals: Vec<_> = self.0.lock().map(|t| t.clone()).unwrap_or_default().into_iter().collect();
        totals.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        totals
    }
}

/// One worker's bookkeeping, added into the shared totals when the worker drops its logger.
struct Local {
    shared: StageTimes,
    /// Top-level operators by id, with their names.
    top: HashMap<usize, String>,
    /// The top-level operator being scheduled and since when.
    running: Option<(usize, Duration)>,
    sums: BTreeMap<String, Duration>,
}

impl Local {
    fn new(shared: StageTimes) -> Local {
        Local { shared, top: HashMap::new(), running: None, sums: BTreeMap::new() }
    }

    fn observe(&mut self, at: Duration, event: TimelyEvent) {
        match event {
            // The dataflow itself has an address of length one; its operators, two.
            TimelyEvent::Operates(op) if op.addr.len() == 2 => {
                self.top.insert(op.id, op.name);
            }
            TimelyEvent::Schedule(s) if self.top.contains_key(&s.id) => match s.start_stop {
                StartStop::Start => self.running = Some((s.id, at)),
                StartStop::Stop => {
                    if let Some((id, since)) = self.running.take().filter(|(id, _)| *id == s.id) {
                        *self.sums.entry(self.top[&id].clone()).or_default() += at.saturating_sub(since);
                    }
                }
            },
            _ => {}
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Ok(mut totals) = self.shared.0.lock() {
            for (name, time) in std::mem::take(&mut self.sums) {
                *totals.entry(name).or_default() += time;
            }
        }
    }
}
