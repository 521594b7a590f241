//! The TUI's feed from an engine in this process.

use std::sync::Arc;

use super::RunStatus;
use super::status::Subscription;
use crate::contract::{Action, Feed, Phase, Snapshot};

pub struct EngineFeed {
    snapshots: Subscription,
    status: Arc<RunStatus>,
    actions: crossbeam_channel::Sender<Action>,
}

impl EngineFeed {
    pub fn new(status: Arc<RunStatus>, actions: crossbeam_channel::Sender<Action>) -> EngineFeed {
        EngineFeed {
            snapshots: status.subscribe(),
            status,
            actions,
        }
    }
}

impl Feed for EngineFeed {
    fn latest(&mut self) -> Option<Arc<Snapshot>> {
        self.snapshots.latest()
    }

    fn act(&mut self, action: Action) -> Result<(), String> {
        if matches!(self.status.phase(), Phase::Finished | Phase::Failed) {
            return Err("the run has ended: nothing left to act on (q quits)".into());
        }
        self.actions
            .try_send(action)
            .map_err(|_| "the engine is not taking actions right now; try again".to_string())
    }
}
