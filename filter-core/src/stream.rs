//! The objects a host glue holds and forwards every callback to: one
//! [`WorkerFilter`] per worker (the proxy-wasm root context), one
//! [`StreamFilter`] per request and one [`UpstreamFilter`] per attempt of
//! the upstream instance. Each method is one host callback; the glue calls
//! it with its [`Host`] and maps the returned [`Verdict`] to the host's own
//! continue/stop value. The unit tests drive these same objects.

use std::cell::RefCell;
use std::rc::Rc;

use crate::config::{self, AttemptRole, Config};
use crate::filter::{self, State, Verdict, Worker};
use crate::heal::{self, Attempt, Stamps};
use crate::host::Host;
use crate::metrics::Metrics;

/// What a worker creates for a new HTTP stream, by its configured role.
pub enum NewStream {
    /// The stamping instance (the listener's HTTP filter).
    Stream(StreamFilter),
    /// An instance on upstream attempts (`{"role": "upstream"}` or
    /// `{"role": "replay"}`, the provider clusters' upstream HTTP filter):
    /// heals a provider 401.
    Upstream(UpstreamFilter),
}

/// One per worker: its configuration, its lookups in flight, its metrics.
pub struct WorkerFilter {
    worker: Rc<Worker>,
    config: Option<Rc<Config>>,
    /// `None`: the stamping instance.
    role: Option<AttemptRole>,
    metrics_defined: bool,
}

impl WorkerFilter {
    /// The worker of context `root`, whose stamp records are `stamps` (one
    /// set per VM: the stamping and the upstream instance share it).
    pub fn new(root: u32, stamps: Rc<RefCell<Stamps>>) -> WorkerFilter {
        WorkerFilter {
            worker: Rc::new(Worker::sharing(root, Metrics::default(), stamps)),
            config: None,
            role: None,
            metrics_defined: false,
        }
    }

    /// The plugin configuration arrived (`raw`: its JSON; `env` reads the
    /// environment for `*_env` fields). `false` refuses it: the host
    /// rejects the configuration.
    pub fn on_configure(
        &mut self,
        host: &dyn Host,
        raw: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> bool {
        if !self.metrics_defined {
            // Before any stream exists: nobody else holds the worker yet.
            let stamps = Rc::clone(&self.worker.stamps);
            self.worker = Rc::new(Worker::sharing(
                self.worker.root,
                Metrics::define(host),
                stamps,
            ));
            self.metrics_defined = true;
        }
        if let Some(role) = config::attempt_role(raw) {
            log::info!("authstamp: configured role={role:?}");
            self.role = Some(role);
            host.set_tick_period(filter::IDLE_TICK);
            return true;
        }
        match Config::parse(raw, env) {
            Ok(config) => {
                log::info!(
                    "authstamp: configured mode={} cluster={}",
                    if config.is_mesh() { "mesh" } else { "gateway" },
                    config.token_service.cluster
                );
                self.set_config(Rc::new(config));
                // Hands batched metrics to the host (see metrics.rs).
                host.set_tick_period(filter::IDLE_TICK);
                true
            }
            Err(error) => {
                log::error!("authstamp: invalid plugin configuration: {error}");
                false
            }
        }
    }

    /// Uses an already parsed configuration (the stamping role).
    pub fn set_config(&mut self, config: Rc<Config>) {
        self.role = None;
        self.config = Some(config);
    }

    /// Makes this an instance on upstream attempts.
    pub fn set_role(&mut self, role: AttemptRole) {
        self.role = Some(role);
    }

    /// Defines the metrics with `host` now (hosts whose configuration is
    /// set with [`WorkerFilter::set_config`]).
    pub fn define_metrics(&mut self, host: &dyn Host) {
        let stamps = Rc::clone(&self.worker.stamps);
        self.worker = Rc::new(Worker::sharing(
            self.worker.root,
            Metrics::define(host),
            stamps,
        ));
        self.metrics_defined = true;
    }

    pub fn worker(&self) -> &Rc<Worker> {
        &self.worker
    }

    pub fn config(&self) -> Option<&Rc<Config>> {
        self.config.as_ref()
    }

    /// A new HTTP stream with context id `id`.
    pub fn new_stream(&self, id: u32) -> NewStream {
        if let Some(role) = self.role {
            NewStream::Upstream(UpstreamFilter {
                id,
                worker: Rc::clone(&self.worker),
                attempt: Attempt::Unknown,
                role,
            })
        } else {
            NewStream::Stream(StreamFilter::new(
                id,
                self.config.clone(),
                Rc::clone(&self.worker),
            ))
        }
    }

    /// A token-service answer delivered to the worker itself (a lookup it
    /// dispatched from a tick): `body_size` bytes of body.
    pub fn on_token_answer(&self, host: &dyn Host, token: u32, body_size: usize) {
        filter::on_call_response(host, &self.worker, token, body_size, self.worker.root);
    }

    /// The worker's timer (period set with [`Host::set_tick_period`]).
    pub fn on_tick(&self, host: &dyn Host) {
        filter::on_tick(host, &self.worker);
    }
}

/// One per request of the stamping instance.
pub struct StreamFilter {
    id: u32,
    config: Option<Rc<Config>>,
    worker: Rc<Worker>,
    state: State,
}

impl StreamFilter {
    pub fn new(id: u32, config: Option<Rc<Config>>, worker: Rc<Worker>) -> StreamFilter {
        StreamFilter {
            id,
            config,
            worker,
            state: State::Fresh,
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// Where the request is (another stream's callback may have completed
    /// it since; see [`StreamFilter::settle`]).
    pub fn state(&self) -> &State {
        &self.state
    }

    fn take_state(&mut self) -> State {
        std::mem::replace(&mut self.state, State::Fresh)
    }

    /// The request headers (the stream is the effective context).
    pub fn on_request_headers(&mut self, host: &dyn Host) -> Verdict {
        let (state, verdict) =
            filter::on_request_headers(host, self.config.as_ref(), &self.worker, self.id);
        self.state = state;
        verdict
    }

    /// A request body chunk: held while the stream waits for its token.
    pub fn on_request_body(&mut self) -> Verdict {
        self.on_data()
    }

    /// The request trailers: held while the stream waits for its token.
    pub fn on_request_trailers(&mut self) -> Verdict {
        self.on_data()
    }

    fn on_data(&mut self) -> Verdict {
        let state = self.take_state();
        let (state, verdict) = filter::on_request_data(state, &self.worker, self.id);
        self.state = state;
        verdict
    }

    /// A token-service answer delivered to this stream (it dispatched the
    /// lookup): completes every stream waiting on it, this one included.
    pub fn on_token_answer(&mut self, host: &dyn Host, token: u32, body_size: usize) {
        filter::on_call_response(host, &self.worker, token, body_size, self.id);
        self.settle();
    }

    /// Brings the state up to date after another context completed the
    /// stream's lookup.
    pub fn settle(&mut self) {
        let state = self.take_state();
        self.state = filter::settle(state, &self.worker, self.id);
    }

    /// The provider's response headers. Only stamped (or waiting) requests
    /// care: a 401 refreshes the token.
    pub fn on_response_headers(&mut self, host: &dyn Host) -> Verdict {
        if matches!(self.state, State::Stamped(..) | State::Waiting(_)) {
            let state = self.take_state();
            self.state = filter::on_response_headers(host, state, &self.worker, self.id);
        }
        Verdict::Continue
    }

    /// The stream is gone: it leaves its lookup and its stamp record.
    pub fn on_done(&mut self, host: &dyn Host) {
        let state = self.take_state();
        self.state = filter::on_done(host, state, &self.worker, self.id);
    }
}

/// One per attempt the router makes to a provider (the upstream instance),
/// or per retry of a 401 (the replay instance).
pub struct UpstreamFilter {
    id: u32,
    worker: Rc<Worker>,
    attempt: Attempt,
    role: AttemptRole,
}

impl UpstreamFilter {
    pub fn new(id: u32, worker: Rc<Worker>, role: AttemptRole) -> UpstreamFilter {
        UpstreamFilter {
            id,
            worker,
            attempt: Attempt::Unknown,
            role,
        }
    }

    pub fn attempt(&self) -> Attempt {
        self.attempt
    }

    pub fn on_request_headers(&mut self, host: &dyn Host) -> Verdict {
        let (attempt, verdict) = match self.role {
            AttemptRole::Upstream => heal::on_upstream_request(host, &self.worker, self.id),
            AttemptRole::Replay => heal::on_replay_request(host, &self.worker, self.id),
        };
        self.attempt = attempt;
        verdict
    }

    pub fn on_request_body(&mut self) -> Verdict {
        heal::request_data(&self.worker, self.attempt)
    }

    pub fn on_request_trailers(&mut self) -> Verdict {
        heal::request_data(&self.worker, self.attempt)
    }

    pub fn on_response_headers(&mut self, host: &dyn Host) -> Verdict {
        self.attempt = heal::on_upstream_response(host, &self.worker, self.attempt, self.role);
        Verdict::Continue
    }

    pub fn on_done(&mut self, host: &dyn Host) {
        heal::on_upstream_done(host, &self.worker, self.id, self.attempt);
    }
}
