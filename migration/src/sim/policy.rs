//! What the simulator drives: tern's controller, or a model of another VMM's policy.

use std::time::Duration;

use crate::controller::{ConfigError, Controller, ControllerConfig, Decision, RoundObservation};

/// A convergence policy the runner can drive with observations.
pub trait ConvergencePolicy {
    /// Name for tables.
    fn name(&self) -> String;
    /// One observation in, one decision out.
    fn observe(&mut self, obs: &RoundObservation) -> Decision;
    /// How often to observe inside round `round`; `None` = only at the end of the round.
    fn interim_interval(&self, round: u32) -> Option<Duration>;
}

/// Default cadence of tern's observations inside a long round, as the VMM's loop does.
pub const TERN_INTERIM: Duration = Duration::from_secs(1);

/// tern's controller, observed at the end of each round and every [`TERN_INTERIM`] within.
#[derive(Clone, Debug)]
pub struct Tern {
    controller: Controller,
    interim: Option<Duration>,
}

impl Tern {
    /// tern with `config`, observing every second inside long rounds.
    pub fn new(config: ControllerConfig) -> Result<Tern, ConfigError> {
        Ok(Tern {
            controller: Controller::new(config)?,
            interim: Some(TERN_INTERIM),
        })
    }

    /// Changes the in-round observation cadence (`None`: once per round).
    pub fn with_interim(mut self, interim: Option<Duration>) -> Tern {
        self.interim = interim;
        self
    }

    /// The controller being driven.
    pub fn controller(&self) -> &Controller {
        &self.controller
    }
}

impl ConvergencePolicy for Tern {
    fn name(&self) -> String {
        format!("tern a={}", self.controller.config().aggression)
    }

    fn observe(&mut self, obs: &RoundObservation) -> Decision {
        self.controller.observe(obs)
    }

    fn interim_interval(&self, _round: u32) -> Option<Duration> {
        self.interim
    }
}
