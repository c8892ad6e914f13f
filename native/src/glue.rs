//! The authstamp filter core behind the native ABI. Every Envoy event goes
//! to the core's objects in a line or two ([`WorkerFilter`] per worker
//! thread and configuration, [`StreamFilter`] / [`UpstreamFilter`] per
//! stream); this module only supplies what proxy-wasm's host gave the Wasm
//! build: effective contexts, dispatch tokens, ticks, metrics by id and
//! shared data ([`MemoryStore`], one for all workers).
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use authstamp_filter_core::filter::{self as core_filter, Verdict};
use authstamp_filter_core::heal::{Stamps, STAMP_PROPERTY};
use authstamp_filter_core::host::{
    DispatchError, HeaderPairs, Host, MetricKind, SharedDataError, SharedStore, WriteError,
};
use authstamp_filter_core::store::MemoryStore;
use authstamp_filter_core::stream::{NewStream, StreamFilter, UpstreamFilter, WorkerFilter};

use crate::abi::{Attribute, ConfigContext, ConfigHandle, Scheduler, Stream, StreamHandle};
use crate::host::{
    BodyStatus, CalloutResponse, CalloutResult, FilterFactory, HeadersStatus, HttpFilter, LogLevel,
    MetricId,
};

/// The event id of a worker tick (the ticker thread or a released lookup).
const TICK_EVENT: u64 = 1;
/// The root context id of every worker (stream ids start above it).
const ROOT: u32 = 1;
/// The hook id of another worker's stream lent to a worker's tick: it only
/// carries that worker's callouts (no worker has a stream of this id).
const CARRIER_ONLY: u32 = u32::MAX;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

// ---------------------------------------------------------------------------
// Shared by every worker thread
// ---------------------------------------------------------------------------

/// The token cache, lookup markers and key checks of all workers.
fn store() -> &'static MemoryStore {
    static STORE: OnceLock<MemoryStore> = OnceLock::new();
    STORE.get_or_init(|| MemoryStore::with_release_hook(Box::new(wake_waiting_workers)))
}

/// Paused streams of every worker (`serial → (worker index, scheduler)`).
type Waiting = Mutex<HashMap<u64, (u32, Arc<Scheduler>)>>;
/// A tick wanted at an instant, carried by a paused stream's scheduler.
type TickRequest = (Instant, Arc<Scheduler>);
/// Callouts in flight: (carrier, Envoy's id) → (worker key, token, target).
type Callouts = HashMap<(StreamHandle, u64), (usize, u32, u32)>;
/// Metrics defined while the configuration is created: name, kind, id.
type Defined = RefCell<Vec<(String, MetricKind, MetricId)>>;

/// Paused streams of every worker: a released lookup wakes one per worker,
/// which ticks that worker.
fn waiting() -> &'static Waiting {
    static WAITING: OnceLock<Waiting> = OnceLock::new();
    WAITING.get_or_init(Mutex::default)
}

fn wake_waiting_workers() {
    let waiting = waiting().lock().unwrap_or_else(PoisonError::into_inner);
    let mut woken = HashSet::new();
    for (worker, scheduler) in waiting.values() {
        if woken.insert(*worker) {
            scheduler.wake(TICK_EVENT);
        }
    }
}

/// One thread that wakes paused streams when their worker's tick is due
/// (the ABI has no worker timer).
fn ticker() -> &'static Mutex<Sender<TickRequest>> {
    static TICKER: OnceLock<Mutex<Sender<TickRequest>>> = OnceLock::new();
    TICKER.get_or_init(|| {
        let (sender, receiver) = mpsc::channel();
        if std::thread::Builder::new()
            .name("authstamp-ticker".to_string())
            .spawn(move || run_ticker(&receiver))
            .is_err()
        {
            crate::abi::log(
                LogLevel::Error,
                "authstamp: could not start the tick thread",
            );
        }
        Mutex::new(sender)
    })
}

fn run_ticker(receiver: &Receiver<TickRequest>) {
    let mut due: Vec<TickRequest> = Vec::new();
    loop {
        let next = due.iter().map(|(at, _)| *at).min();
        let received = match next {
            Some(at) => receiver.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(entry) => due.push(entry),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        due.retain(|(at, scheduler)| {
            let ready = *at <= now;
            if ready {
                scheduler.wake(TICK_EVENT);
            }
            !ready
        });
    }
}

/// One filter configuration, shared by every worker: its JSON, its
/// metrics (defined on the main thread) and their handle.
pub struct Shared {
    raw: Vec<u8>,
    metrics: Vec<(MetricKind, MetricId)>,
    by_name: HashMap<String, u32>,
    handle: ConfigHandle,
}

/// The configuration's factory: validates the JSON and defines the
/// metrics by running the core's own `on_configure` once on the main thread.
pub fn factory(context: &ConfigContext<'_>) -> Result<Box<dyn FilterFactory>, String> {
    let defined = RefCell::new(Vec::new());
    let host = NativeHost::defining(context, &defined);
    let mut probe = WorkerFilter::new(ROOT, Rc::default());
    if !probe.on_configure(&host, context.config, &env) {
        return Err("invalid plugin configuration (see the log above)".to_string());
    }
    let defined = defined.into_inner();
    let by_name = defined
        .iter()
        .enumerate()
        .filter_map(|(i, (name, _, _))| Some((name.clone(), u32::try_from(i).ok()?)))
        .collect();
    Ok(Box::new(Factory(Arc::new(Shared {
        raw: context.config.to_vec(),
        metrics: defined
            .into_iter()
            .map(|(_, kind, id)| (kind, id))
            .collect(),
        by_name,
        handle: context.handle(),
    }))))
}

struct Factory(Arc<Shared>);

// ---------------------------------------------------------------------------
// Per worker thread
// ---------------------------------------------------------------------------

thread_local! {
    /// One stamp record set per worker thread, shared by the stamping and
    /// the upstream instance (as one proxy-wasm VM shares it).
    static STAMPS: Rc<RefCell<Stamps>> = Rc::default();
    /// This thread's worker of each configuration (by `Shared` address).
    static WORKERS: RefCell<HashMap<usize, Rc<Worker>>> = RefCell::new(HashMap::new());
}

/// Serial numbers of waiting registrations (unique in the process).
static WAIT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// One configuration on one worker thread: the core's worker object and
/// the bookkeeping proxy-wasm did for it.
struct Worker {
    core: RefCell<WorkerFilter>,
    shared: Arc<Shared>,
    /// Live streams by context id.
    streams: RefCell<HashMap<u32, StreamHandle>>,
    /// Paused streams of this worker with their wake-up handle.
    paused: RefCell<HashMap<u32, (u64, Arc<Scheduler>)>>,
    next_id: Cell<u32>,
    next_token: Cell<u32>,
    tick_period: Cell<Duration>,
    last_tick: Cell<Instant>,
    /// The upstream instance's worker: its streams (upstream attempts)
    /// cannot carry wake-ups (Envoy runs no scheduled event on them).
    upstream: Cell<bool>,
}

impl Worker {
    fn of(shared: &Arc<Shared>) -> Rc<Worker> {
        let key = Arc::as_ptr(shared) as usize;
        if let Some(worker) = WORKERS.with(|w| w.borrow().get(&key).cloned()) {
            return worker;
        }
        let worker = Rc::new(Worker {
            core: RefCell::new(WorkerFilter::new(ROOT, STAMPS.with(Rc::clone))),
            shared: Arc::clone(shared),
            streams: RefCell::default(),
            paused: RefCell::default(),
            next_id: Cell::new(ROOT + 1),
            next_token: Cell::new(1),
            tick_period: Cell::new(core_filter::IDLE_TICK),
            last_tick: Cell::new(Instant::now()),
            upstream: Cell::new(false),
        });
        let host = NativeHost::new(&worker, None, ROOT);
        // Validated on the main thread already; a refusal leaves the worker
        // without configuration and the core refuses its requests.
        worker
            .core
            .borrow_mut()
            .on_configure(&host, &shared.raw, &env);
        host.finish();
        WORKERS.with(|w| w.borrow_mut().insert(key, Rc::clone(&worker)));
        worker
    }

    fn new_id(&self) -> u32 {
        let id = self.next_id.get();
        self.next_id.set(id.checked_add(1).unwrap_or(ROOT + 1));
        id
    }

    /// Runs the core's tick if its period is over (hooks call this first:
    /// metrics are handed over while traffic flows).
    fn tick_if_due(&self, host: &NativeHost<'_, '_, '_>) {
        if self.last_tick.get().elapsed() >= self.tick_period.get() {
            self.tick(host);
        }
    }

    fn tick(&self, host: &NativeHost<'_, '_, '_>) {
        self.last_tick.set(Instant::now());
        let back = host.effective.replace(ROOT);
        self.core.borrow().on_tick(host);
        host.effective.set(back);
    }

    fn key(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }

    fn wants_fast_ticks(&self) -> bool {
        self.tick_period.get() < core_filter::IDLE_TICK
    }

    fn pause(&self, id: u32, stream: &Stream<'_>) {
        if self.paused.borrow().contains_key(&id) {
            return;
        }
        let Some(scheduler) = stream.scheduler() else {
            return;
        };
        let scheduler = Arc::new(scheduler);
        let serial = WAIT_SERIAL.fetch_add(1, Ordering::Relaxed);
        waiting()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(serial, (stream.worker_index(), Arc::clone(&scheduler)));
        self.paused.borrow_mut().insert(id, (serial, scheduler));
    }

    fn forget(&self, id: u32, handle: StreamHandle) {
        self.streams.borrow_mut().remove(&id);
        CALLOUTS.with(|c| c.borrow_mut().retain(|(carrier, _), _| *carrier != handle));
        let removed = self.paused.borrow_mut().remove(&id);
        if let Some((serial, _)) = removed {
            waiting()
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&serial);
            // Its armed tick dies with it: another stream carries it.
            if ARMED.get() == Some((self.key(), id)) {
                ARMED.set(None);
                arm_thread_tick();
            }
        }
    }
}

thread_local! {
    /// Callouts in flight on this thread: (carrier stream, Envoy's id) →
    /// (worker key, token, context the answer belongs to: a stream id or
    /// [`ROOT`]). A worker root's callouts ride on a downstream stream of
    /// any worker of the thread.
    static CALLOUTS: RefCell<Callouts> = RefCell::new(HashMap::new());
    /// This thread's armed tick: (worker key, carrier stream id).
    static ARMED: Cell<Option<(usize, u32)>> = const { Cell::new(None) };
}

/// Asks the ticker for this thread's next tick while one of its workers
/// wants fast ticks. The wake-up is carried by a paused stream of any
/// worker of the thread or, failing that, by any live stream of it (the
/// ABI has no worker timer); a tick runs every worker of the thread.
fn arm_thread_tick() {
    if ARMED.get().is_some() {
        return;
    }
    // Checked before anything is collected: on a hit nobody wants ticks.
    let period = WORKERS.with(|w| {
        w.borrow()
            .values()
            .filter(|w| w.wants_fast_ticks())
            .map(|w| w.tick_period.get())
            .min()
    });
    let Some(period) = period else {
        return;
    };
    // Downstream streams only: Envoy runs no scheduled event on an
    // upstream attempt.
    let workers: Vec<Rc<Worker>> = WORKERS.with(|w| {
        w.borrow()
            .values()
            .filter(|w| !w.upstream.get())
            .cloned()
            .collect()
    });
    let paused = |w: &Worker| {
        w.paused
            .borrow()
            .iter()
            .next()
            .map(|(id, (_, s))| (*id, Arc::clone(s)))
    };
    let mut carrier = workers
        .iter()
        .find_map(|w| paused(w).map(|(id, s)| (w.key(), id, s)));
    if carrier.is_none() {
        carrier = workers.iter().find_map(|w| {
            let streams: Vec<(u32, StreamHandle)> =
                w.streams.borrow().iter().map(|(i, h)| (*i, *h)).collect();
            streams.into_iter().find_map(|(id, handle)| {
                handle.with(|stream| w.pause(id, stream))?;
                let scheduler = w.paused.borrow().get(&id).map(|(_, s)| Arc::clone(s))?;
                Some((w.key(), id, scheduler))
            })
        });
    }
    let Some((key, id, scheduler)) = carrier else {
        return;
    };
    let sent = ticker()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send((Instant::now() + period, scheduler));
    if sent.is_ok() {
        ARMED.set(Some((key, id)));
    }
}

/// A tick arrived on stream `id` of worker `own`: every worker of this
/// thread that wants ticks (or is due) ticks, `own` with the stream as its
/// hook (its own resumes go through it).
fn on_tick_event(own: &Rc<Worker>, stream: &mut Stream<'_>, id: u32) {
    ARMED.set(None);
    let host = NativeHost::new(own, Some(stream), id);
    own.tick(&host);
    host.finish();
    let workers: Vec<Rc<Worker>> = WORKERS.with(|w| w.borrow().values().cloned().collect());
    for worker in workers.iter().filter(|w| !Rc::ptr_eq(w, own)) {
        if worker.wants_fast_ticks() || worker.last_tick.get().elapsed() >= worker.tick_period.get()
        {
            let host = NativeHost::new(worker, Some(&mut *stream), CARRIER_ONLY);
            worker.tick(&host);
            host.finish();
        }
    }
    arm_thread_tick();
}

// ---------------------------------------------------------------------------
// The core's host
// ---------------------------------------------------------------------------

/// What the core asked of a stream, done once the core call returned (a
/// resume runs that stream's later filters at once, and may call back).
enum Action {
    Resume,
    ResumeResponse,
    Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
}

/// [`Host`] for one hook: the hook's stream, the worker's other streams by
/// id, the callout answer being delivered.
struct NativeHost<'w, 's, 'h> {
    worker: Option<&'w Worker>,
    hook: Option<RefCell<&'s mut Stream<'h>>>,
    hook_id: u32,
    effective: Cell<u32>,
    actions: RefCell<Vec<(u32, Action)>>,
    answer: Option<CalloutResponse>,
    /// While the configuration is created: the metrics being defined.
    defining: Option<(&'w ConfigContext<'w>, &'w Defined)>,
}

impl<'w, 's, 'h> NativeHost<'w, 's, 'h> {
    fn new(worker: &'w Worker, hook: Option<&'s mut Stream<'h>>, hook_id: u32) -> Self {
        NativeHost {
            worker: Some(worker),
            hook: hook.map(RefCell::new),
            hook_id,
            effective: Cell::new(hook_id),
            actions: RefCell::default(),
            answer: None,
            defining: None,
        }
    }

    fn defining(context: &'w ConfigContext<'w>, defined: &'w Defined) -> Self {
        NativeHost {
            worker: None,
            hook: None,
            hook_id: ROOT,
            effective: Cell::new(ROOT),
            actions: RefCell::default(),
            answer: None,
            defining: Some((context, defined)),
        }
    }

    /// Runs `f` on the effective stream; `None` for the root or a gone stream.
    fn on_effective<R>(&self, f: impl FnOnce(&mut Stream<'_>) -> R) -> Option<R> {
        let id = self.effective.get();
        if id == self.hook_id {
            let hook = self.hook.as_ref()?;
            let mut stream = hook.borrow_mut();
            return Some(f(&mut stream));
        }
        let handle = self.worker?.streams.borrow().get(&id).copied()?;
        handle.with(f)
    }

    fn queue(&self, action: Action) {
        self.actions
            .borrow_mut()
            .push((self.effective.get(), action));
    }

    /// Does what the core queued, then arms the next tick.
    fn finish(self) {
        let actions = self.actions.take();
        for (id, action) in actions {
            if id == self.hook_id {
                if let Some(hook) = &self.hook {
                    apply(&mut hook.borrow_mut(), action);
                }
            } else if let Some(worker) = self.worker {
                let handle = worker.streams.borrow().get(&id).copied();
                if let Some(handle) = handle {
                    handle.with(|stream| apply(stream, action));
                }
            }
        }
        if let Some(worker) = self.worker {
            // Fast ticks wanted and nobody armed: this stream carries them.
            if worker.wants_fast_ticks() && ARMED.get().is_none() && !worker.upstream.get() {
                if let Some(hook) = &self.hook {
                    worker.pause(self.hook_id, &hook.borrow());
                }
            }
            arm_thread_tick();
        }
    }

    fn metric(&self, id: u32) -> Option<(MetricKind, MetricId)> {
        let index = usize::try_from(id).ok()?;
        self.worker?.shared.metrics.get(index).copied()
    }
}

fn apply(stream: &mut Stream<'_>, action: Action) {
    match action {
        Action::Resume => stream.continue_decoding(),
        Action::ResumeResponse => stream.continue_encoding(),
        Action::Reply {
            status,
            headers,
            body,
        } => {
            let headers: Vec<(&str, &[u8])> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_bytes()))
                .collect();
            stream.send_response(status, &headers, &body);
        }
    }
}

/// Makes the request header map hold exactly `headers`: names it lacks
/// are removed, and a name is written (its first value set, the others
/// added) only where its values differ from the map's (most headers of a
/// stamped request pass unchanged; each write is a host call).
fn replace_request_headers(
    stream: &mut Stream<'_>,
    headers: &[(&str, &[u8])],
) -> Result<(), crate::host::HostError> {
    let (gone, changed) = {
        let current = stream.request_headers();
        let mut gone: Vec<String> = Vec::new();
        for (i, (name, _)) in current.iter().enumerate() {
            let first = !current[..i]
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name));
            let kept = headers
                .iter()
                .any(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name));
            if first && !kept {
                gone.push(String::from_utf8_lossy(name).into_owned());
            }
        }
        let mut changed: Vec<&str> = Vec::new();
        for (i, (name, _)) in headers.iter().enumerate() {
            if headers[..i]
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                continue;
            }
            let wanted = headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v);
            let held = current
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v)| *v);
            if !wanted.eq(held) {
                changed.push(name);
            }
        }
        (gone, changed)
    };
    for name in gone {
        stream.remove_request_header(&name)?;
    }
    for name in changed {
        let mut values = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v);
        if let Some(first) = values.next() {
            stream.set_request_header(name, first)?;
        }
        for value in values {
            stream.add_request_header(name, value)?;
        }
    }
    Ok(())
}

impl SharedStore for NativeHost<'_, '_, '_> {
    fn get_shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        store().get_shared_data(key)
    }

    fn set_shared_data(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError> {
        store().set_shared_data(key, value, cas)
    }
}

impl Host for NativeHost<'_, '_, '_> {
    fn request_headers(&self) -> HeaderPairs {
        self.on_effective(|s| {
            s.request_headers()
                .into_iter()
                .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v.to_vec()))
                .collect()
        })
        .unwrap_or_default()
    }

    fn set_request_header(&self, name: &str, value: &str) -> Result<(), WriteError> {
        let write = |s: &mut Stream<'_>| {
            s.set_request_header(name, value.as_bytes())?;
            s.clear_route_cache();
            Ok::<(), crate::host::HostError>(())
        };
        match self.on_effective(write) {
            Some(Ok(())) => Ok(()),
            _ => Err(WriteError),
        }
    }

    fn set_request_headers(&self, headers: &[(&str, &[u8])]) -> Result<(), WriteError> {
        let write = |s: &mut Stream<'_>| {
            replace_request_headers(s, headers)?;
            // The stamp decides the route (`:authority`, the route header).
            s.clear_route_cache();
            Ok::<(), crate::host::HostError>(())
        };
        match self.on_effective(write) {
            Some(Ok(())) => Ok(()),
            _ => Err(WriteError),
        }
    }

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<u32, DispatchError> {
        let worker = self.worker.ok_or(DispatchError)?;
        // Envoy's callouts want `host`, proxy-wasm's `:authority`.
        let headers: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(n, v)| (if *n == ":authority" { "host" } else { *n }, v.as_bytes()))
            .collect();
        let target = self.effective.get();
        let call = |s: &mut Stream<'_>| {
            s.http_callout(cluster, &headers, body, timeout)
                .map(|id| (s.handle(), id))
        };
        // The root has no stream of its own: a live downstream stream of the
        // thread carries its callout (an upstream attempt ends too soon),
        // and the answer goes back to the root.
        let started = if target != ROOT {
            self.on_effective(call)
        } else if self.hook.is_some() && (!worker.upstream.get() || self.hook_id == CARRIER_ONLY) {
            let back = self.effective.replace(self.hook_id);
            let started = self.on_effective(call);
            self.effective.set(back);
            started
        } else {
            let workers: Vec<Rc<Worker>> = WORKERS.with(|w| w.borrow().values().cloned().collect());
            let carried = workers
                .iter()
                .filter(|w| !w.upstream.get())
                .flat_map(|w| w.streams.borrow().values().copied().collect::<Vec<_>>())
                .find_map(|handle| handle.with(call));
            match carried {
                Some(started) => Some(started),
                None => {
                    let back = self.effective.replace(self.hook_id);
                    let started = self.on_effective(call);
                    self.effective.set(back);
                    started
                }
            }
        };
        let (carrier, id) = started.ok_or(DispatchError)?.map_err(|_| DispatchError)?;
        let token = worker.next_token.get();
        worker.next_token.set(token.wrapping_add(1).max(1));
        CALLOUTS.with(|c| {
            c.borrow_mut()
                .insert((carrier, id), (worker.key(), token, target))
        });
        Ok(token)
    }

    fn http_call_response_headers(&self) -> HeaderPairs {
        match &self.answer {
            Some(answer) if answer.result == CalloutResult::Success => answer.headers.clone(),
            _ => Vec::new(),
        }
    }

    fn http_call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        let answer = self.answer.as_ref()?;
        Some(answer.body[..size.min(answer.body.len())].to_vec())
    }

    fn now_unix_nanos(&self) -> Option<u64> {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
        u64::try_from(since.as_nanos()).ok()
    }

    fn response_status(&self) -> Option<u16> {
        self.on_effective(|s| {
            let status = s.response_header(":status")?;
            std::str::from_utf8(status).ok()?.parse().ok()
        })
        .flatten()
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        match path {
            ["connection", "uri_san_peer_certificate"] => self
                .on_effective(|s| {
                    s.attribute(Attribute::ConnectionUriSanPeerCertificate)
                        .map(<[u8]>::to_vec)
                })
                .flatten(),
            [name] if *name == STAMP_PROPERTY => self
                .on_effective(|s| s.filter_state(STAMP_PROPERTY).map(<[u8]>::to_vec))
                .flatten(),
            _ => None,
        }
    }

    fn set_stream_property(&self, name: &str, value: &[u8]) {
        let written = self.on_effective(|s| s.set_filter_state(name, value));
        if !matches!(written, Some(Ok(()))) {
            log::warn!("authstamp: could not set a stream property");
        }
    }

    fn add_response_header(&self, name: &str, value: &str) {
        let written = self.on_effective(|s| s.add_response_header(name, value.as_bytes()));
        if !matches!(written, Some(Ok(()))) {
            log::warn!("authstamp: could not add a response header");
        }
    }

    fn remove_response_header(&self, name: &str) {
        let written = self.on_effective(|s| s.remove_response_header(name));
        if !matches!(written, Some(Ok(()))) {
            log::warn!("authstamp: could not remove a response header");
        }
    }

    fn resume_response(&self) {
        self.queue(Action::ResumeResponse);
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        if let Some((context, defined)) = self.defining {
            let id = match kind {
                MetricKind::Counter => context.define_counter(name),
                MetricKind::Gauge => context.define_gauge(name),
                MetricKind::Histogram => context.define_histogram(name),
            }?;
            let mut defined = defined.borrow_mut();
            defined.push((name.to_string(), kind, id));
            return u32::try_from(defined.len() - 1).ok();
        }
        self.worker?.shared.by_name.get(name).copied()
    }

    fn increment_metric(&self, id: u32, delta: i64) {
        let (Some(worker), Some((kind, metric))) = (self.worker, self.metric(id)) else {
            return;
        };
        let handle = &worker.shared.handle;
        let amount = delta.unsigned_abs();
        let _ = match (kind, delta >= 0) {
            (MetricKind::Counter, true) => handle.increment_counter(metric, amount),
            (MetricKind::Gauge, true) => handle.increment_gauge(metric, amount),
            (MetricKind::Gauge, false) => handle.decrement_gauge(metric, amount),
            _ => Ok(()),
        };
    }

    fn record_metric(&self, id: u32, value: u64) {
        let (Some(worker), Some((kind, metric))) = (self.worker, self.metric(id)) else {
            return;
        };
        let handle = &worker.shared.handle;
        let _ = match kind {
            MetricKind::Histogram => handle.record_histogram(metric, value),
            MetricKind::Gauge => handle.set_gauge(metric, value),
            MetricKind::Counter => Ok(()),
        };
    }

    fn send_local_reply(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.queue(Action::Reply {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
                .collect(),
            body: body.to_vec(),
        });
    }

    fn resume_request(&self) {
        self.queue(Action::Resume);
    }

    fn set_effective_context(&self, context_id: u32) -> bool {
        let known = context_id == ROOT
            || context_id == self.hook_id
            || self
                .worker
                .is_some_and(|w| w.streams.borrow().contains_key(&context_id));
        if known {
            self.effective.set(context_id);
        }
        known
    }

    fn set_tick_period(&self, period: Duration) {
        if let Some(worker) = self.worker {
            worker.tick_period.set(period);
        }
    }
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

impl FilterFactory for Factory {
    fn new_filter(&self, stream: &mut Stream<'_>) -> Box<dyn HttpFilter> {
        let worker = Worker::of(&self.0);
        let id = worker.new_id();
        worker.streams.borrow_mut().insert(id, stream.handle());
        let core = worker.core.borrow().new_stream(id);
        let handle = stream.handle();
        match core {
            NewStream::Stream(core) => Box::new(NativeStream {
                id,
                handle,
                core,
                worker,
                completed: false,
            }),
            NewStream::Upstream(core) => {
                worker.upstream.set(true);
                Box::new(NativeUpstream {
                    id,
                    handle,
                    core,
                    worker,
                    completed: false,
                })
            }
        }
    }
}

fn headers_status(verdict: Verdict) -> HeadersStatus {
    match verdict {
        Verdict::Continue => HeadersStatus::Continue,
        Verdict::Pause => HeadersStatus::Stop,
    }
}

fn body_status(verdict: Verdict) -> BodyStatus {
    match verdict {
        Verdict::Continue => BodyStatus::Continue,
        Verdict::Pause => BodyStatus::StopAndBuffer,
    }
}

/// A request of the stamping instance.
struct NativeStream {
    id: u32,
    handle: StreamHandle,
    core: StreamFilter,
    worker: Rc<Worker>,
    /// `on_stream_complete` ran (else `Drop` does its work).
    completed: bool,
}

impl HttpFilter for NativeStream {
    fn on_request_headers(&mut self, stream: &mut Stream<'_>, _: bool) -> HeadersStatus {
        let worker = Rc::clone(&self.worker);
        let host = NativeHost::new(&worker, Some(stream), self.id);
        worker.tick_if_due(&host);
        let verdict = self.core.on_request_headers(&host);
        host.finish();
        if verdict == Verdict::Pause {
            // Ticks and released lookups wake the worker through this stream.
            worker.pause(self.id, stream);
            arm_thread_tick();
        }
        headers_status(verdict)
    }

    fn on_request_body(&mut self, _: &mut Stream<'_>, _: bool) -> BodyStatus {
        body_status(self.core.on_request_body())
    }

    fn on_request_trailers(&mut self, _: &mut Stream<'_>) -> HeadersStatus {
        headers_status(self.core.on_request_trailers())
    }

    fn on_response_headers(&mut self, stream: &mut Stream<'_>, _: bool) -> HeadersStatus {
        let worker = Rc::clone(&self.worker);
        let host = NativeHost::new(&worker, Some(stream), self.id);
        let verdict = self.core.on_response_headers(&host);
        host.finish();
        headers_status(verdict)
    }

    fn on_callout_done(&mut self, stream: &mut Stream<'_>, id: u64, response: CalloutResponse) {
        let core = &mut self.core;
        deliver_answer(
            &self.worker,
            stream,
            self.id,
            id,
            response,
            |host, token, size| {
                core.on_token_answer(host, token, size);
            },
        );
    }

    fn on_scheduled(&mut self, stream: &mut Stream<'_>, event_id: u64) {
        if event_id != TICK_EVENT {
            return;
        }
        on_tick_event(&Rc::clone(&self.worker), stream, self.id);
        self.core.settle();
    }

    fn on_stream_complete(&mut self, stream: &mut Stream<'_>) {
        let worker = Rc::clone(&self.worker);
        let host = NativeHost::new(&worker, Some(stream), self.id);
        self.core.on_done(&host);
        // No VM crossing to save here: hand batched hits over at once.
        worker.core.borrow().worker().metrics.flush(&host);
        host.finish();
        worker.forget(self.id, self.handle);
        self.completed = true;
    }
}

/// A stream whose stream-complete hook did not reach the filter (it came
/// while another hook of the stream ran, or a panic disabled the filter)
/// ends here, or it would stay in the worker's maps for good.
impl Drop for NativeStream {
    fn drop(&mut self) {
        if self.completed {
            return;
        }
        let worker = Rc::clone(&self.worker);
        let host = NativeHost::new(&worker, None, self.id);
        self.core.on_done(&host);
        host.finish();
        worker.forget(self.id, self.handle);
    }
}

/// Delivers a callout answer to the context it belongs to: the worker root
/// (it dispatched through this carrier stream) or the stream itself
/// (`to_stream`).
fn deliver_answer(
    worker: &Rc<Worker>,
    stream: &mut Stream<'_>,
    stream_id: u32,
    callout: u64,
    response: CalloutResponse,
    to_stream: impl FnOnce(&NativeHost<'_, '_, '_>, u32, usize),
) {
    let key = (stream.handle(), callout);
    let Some((owner, token, target)) = CALLOUTS.with(|c| c.borrow_mut().remove(&key)) else {
        return;
    };
    let size = response.body.len();
    if owner != worker.key() {
        // Another worker's root callout that this stream carried.
        let Some(owner) = WORKERS.with(|w| w.borrow().get(&owner).cloned()) else {
            return;
        };
        let mut host = NativeHost::new(&owner, None, ROOT);
        host.answer = Some(response);
        owner.core.borrow().on_token_answer(&host, token, size);
        host.finish();
        return;
    }
    let mut host = NativeHost::new(worker, Some(stream), stream_id);
    host.answer = Some(response);
    host.effective.set(target);
    if target == ROOT {
        worker.core.borrow().on_token_answer(&host, token, size);
    } else {
        to_stream(&host, token, size);
    }
    host.finish();
}

/// An upstream attempt the filter runs on (`{"role": "upstream"}`, or
/// `{"role": "replay"}` on a retry).
struct NativeUpstream {
    id: u32,
    handle: StreamHandle,
    core: UpstreamFilter,
    worker: Rc<Worker>,
    /// `on_stream_complete` ran (else `Drop` does its work).
    completed: bool,
}

impl HttpFilter for NativeUpstream {
    /// Answers to the worker's own callouts (forced refreshes) that this
    /// attempt carried.
    fn on_callout_done(&mut self, stream: &mut Stream<'_>, id: u64, response: CalloutResponse) {
        deliver_answer(&self.worker, stream, self.id, id, response, |_, _, _| {});
    }

    fn on_scheduled(&mut self, stream: &mut Stream<'_>, event_id: u64) {
        if event_id == TICK_EVENT {
            on_tick_event(&Rc::clone(&self.worker), stream, self.id);
        }
    }

    fn on_request_headers(&mut self, stream: &mut Stream<'_>, _: bool) -> HeadersStatus {
        let worker = Rc::clone(&self.worker);
        let host = NativeHost::new(&worker, Some(stream), self.id);
        let verdict = self.core.on_request_headers(&host);
        host.finish();
        if verdict == Verdict::Pause {
            // A replay waiting for the fresher token: the ticks that bring it
            // come through a downstream stream of this thread.
            arm_thread_tick();
        }
        headers_status(verdict)
    }

    fn on_request_body(&mut self, _: &mut Stream<'_>, _: bool) -> BodyStatus {
        body_status(self.core.on_request_body())
    }

    fn on_request_trailers(&mut self, _: &mut Stream<'_>) -> HeadersStatus {
        headers_status(self.core.on_request_trailers())
    }

    fn on_response_headers(&mut self, stream: &mut Stream<'_>, _: bool) -> HeadersStatus {
        let worker = Rc::clone(&self.worker);
        let host = NativeHost::new(&worker, Some(stream), self.id);
        let verdict = self.core.on_response_headers(&host);
        host.finish();
        headers_status(verdict)
    }

    fn on_stream_complete(&mut self, stream: &mut Stream<'_>) {
        let worker = Rc::clone(&self.worker);
        let host = NativeHost::new(&worker, Some(stream), self.id);
        self.core.on_done(&host);
        host.finish();
        worker.forget(self.id, self.handle);
        self.completed = true;
    }
}

/// Envoy 1.40 runs no stream-complete hook on an upstream attempt: its end
/// runs here, when Envoy destroys the filter (else every attempt stayed in
/// the worker's `streams` map, and held replays in the in-flight table).
impl Drop for NativeUpstream {
    fn drop(&mut self) {
        if self.completed {
            return;
        }
        let worker = Rc::clone(&self.worker);
        let host = NativeHost::new(&worker, None, self.id);
        self.core.on_done(&host);
        host.finish();
        worker.forget(self.id, self.handle);
    }
}
