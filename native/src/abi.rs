//! Envoy's dynamic-module ABI, as far as authstamp uses it, and the only
//! `unsafe` code of the module.
//!
//! Written from `source/extensions/dynamic_modules/abi/abi.h` of
//! envoyproxy/envoy (the header whose HTTP filter hooks are exactly the ones
//! Envoy 1.40.0 exports for its own built-in module); every callback
//! declared here is exported by the official 1.40.0 binary (`nm -D`).
//!
//! Three layers, top to bottom:
//! - raw C types and `extern "C"` declarations of the callbacks used;
//! - safe handles over Envoy's pointers ([`Stream`], [`ConfigContext`],
//!   [`ConfigHandle`], [`Scheduler`]) whose methods are the only way the
//!   rest of the module reaches Envoy;
//! - the exported `envoy_dynamic_module_on_*` event hooks, each behind a
//!   panic barrier: a panic never unwinds into Envoy; the stream it
//!   happened on gets a 500 `internal` reply and the filter is disabled.
#![allow(unsafe_code)]
// The hooks are safe `extern "C"` functions that only Envoy calls, with
// abi.h's contract for every pointer it passes; each dereference says why
// that contract makes it sound.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::{c_char, c_void};
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::time::Duration;

use crate::host::{
    BodyStatus, CalloutError, CalloutResponse, CalloutResult, FilterFactory, HeadersStatus,
    HostError, HttpFilter, LogLevel, MetricId,
};

/// The ABI version this module is built for (Envoy 1.40's).
const ABI_VERSION: &[u8] = b"v0.2.0\0";

// ---------------------------------------------------------------------------
// Raw C types (abi.h "Common Types", "HTTP Filter Types")
// ---------------------------------------------------------------------------

/// `envoy_dynamic_module_type_envoy_buffer`: bytes owned by Envoy.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const c_char,
    length: usize,
}

/// `envoy_dynamic_module_type_module_buffer`: bytes owned by the module.
#[repr(C)]
#[derive(Clone, Copy)]
struct ModuleBuffer {
    ptr: *const c_char,
    length: usize,
}

/// `envoy_dynamic_module_type_module_http_header`.
#[repr(C)]
struct ModuleHttpHeader {
    key_ptr: *const c_char,
    key_length: usize,
    value_ptr: *const c_char,
    value_length: usize,
}

/// `envoy_dynamic_module_type_envoy_http_header`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHttpHeader {
    key_ptr: *const c_char,
    key_length: usize,
    value_ptr: *const c_char,
    value_length: usize,
}

type FilterEnvoyPtr = *mut c_void;
type FilterModulePtr = *const c_void;
type ConfigEnvoyPtr = *mut c_void;
type ConfigModulePtr = *const c_void;
type SchedulerPtr = *mut c_void;

// C enums are `int`-sized; values Envoy sends are read as integers so that
// an unknown value is never an invalid Rust enum.
const HEADER_REQUEST: u32 = 0;
const HEADER_RESPONSE: u32 = 2;
const CALLOUT_INIT_SUCCESS: u32 = 0;
const CALLOUT_INIT_MISSING_HEADERS: u32 = 1;
const CALLOUT_INIT_CLUSTER_NOT_FOUND: u32 = 2;
const CALLOUT_RESULT_SUCCESS: u32 = 0;
const CALLOUT_RESULT_RESET: u32 = 1;
const METRICS_SUCCESS: u32 = 0;
const LOCAL_REPLY_CONTINUE: u32 = 0;
const HEADERS_CONTINUE: u32 = 0;
const HEADERS_STOP_ITERATION: u32 = 1;
const BODY_CONTINUE: u32 = 0;
// Buffers with flow control (reading stops past the limit) instead of a
// 413 past it, as proxy-wasm's pause does.
const BODY_STOP_AND_WATERMARK: u32 = 2;
const TRAILERS_CONTINUE: u32 = 0;
const TRAILERS_STOP_ITERATION: u32 = 1;

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: bytes.as_ptr().cast(),
            length: bytes.len(),
        }
    }

    /// A null buffer: "no value" (removes a header in `set_header`).
    fn null() -> ModuleBuffer {
        ModuleBuffer {
            ptr: ptr::null(),
            length: 0,
        }
    }
}

impl EnvoyBuffer {
    fn empty() -> EnvoyBuffer {
        EnvoyBuffer {
            ptr: ptr::null(),
            length: 0,
        }
    }

    /// The bytes of an Envoy buffer.
    ///
    /// SAFETY (caller): the buffer comes from Envoy and is valid for `'a`
    /// (abi.h: until the end of the current hook unless a setter is called).
    unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            return &[];
        }
        // SAFETY: Envoy hands out `length` readable bytes at `ptr`, alive for
        // 'a as the caller promises.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.length) }
    }
}

// ---------------------------------------------------------------------------
// Callbacks (implemented by Envoy)
// ---------------------------------------------------------------------------

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;

    fn envoy_dynamic_module_callback_http_get_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: FilterEnvoyPtr,
        header_type: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterEnvoyPtr,
        header_type: u32,
        result_headers: *mut EnvoyHttpHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: FilterEnvoyPtr,
        attribute_id: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter: FilterEnvoyPtr,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_filter_state_bytes(
        filter: FilterEnvoyPtr,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoyPtr,
        status_code: u32,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_clear_route_cache(filter: FilterEnvoyPtr);
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: FilterEnvoyPtr);
    fn envoy_dynamic_module_callback_http_filter_continue_encoding(filter: FilterEnvoyPtr);
    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: FilterEnvoyPtr,
        callout_id_out: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(
        filter: FilterEnvoyPtr,
    ) -> SchedulerPtr;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        scheduler: SchedulerPtr,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: SchedulerPtr);
    fn envoy_dynamic_module_callback_http_filter_get_worker_index(filter: FilterEnvoyPtr) -> u32;

    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id_out: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id_out: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id_out: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_set_gauge(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_gauge(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_decrement_gauge(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
}

// ---------------------------------------------------------------------------
// Safe handles
// ---------------------------------------------------------------------------

/// Writes a message to Envoy's log (component `dynamic_modules`).
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the buffer points at `message`, alive for the call; Envoy
    // copies it.
    unsafe { envoy_dynamic_module_callback_log(level as u32, ModuleBuffer::of(message.as_bytes())) }
}

/// Whether Envoy would print a message of `level` (skip formatting if not).
pub fn log_enabled(level: LogLevel) -> bool {
    // SAFETY: a plain query without pointers.
    unsafe { envoy_dynamic_module_callback_log_enabled(level as u32) }
}

/// What a hook asked Envoy to do once the filter has returned: run after
/// the filter is released, because Envoy may call the same stream's hooks
/// again from inside these calls (a local reply runs the encoder filters).
enum Deferred {
    ContinueDecoding,
    ContinueEncoding,
    SendResponse {
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
        details: String,
    },
}

/// One HTTP stream, for the duration of one hook: header access, local
/// replies, resumes, callouts, schedulers and per-stream metrics.
///
/// Borrowed header values stay valid until the next write, which takes
/// `&mut self`: the borrow checker enforces abi.h's lifetime rule.
pub struct Stream<'hook> {
    raw: FilterEnvoyPtr,
    deferred: Option<Deferred>,
    _hook: PhantomData<&'hook mut ()>,
}

impl Stream<'_> {
    fn header(&self, header_type: u32, name: &str) -> Option<&[u8]> {
        let mut value = EnvoyBuffer::empty();
        let mut count = 0usize;
        // SAFETY: `self.raw` is the live filter of the current hook; the key
        // buffer and both out-pointers are valid locals.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.raw,
                header_type,
                ModuleBuffer::of(name.as_bytes()),
                &mut value,
                0,
                &mut count,
            )
        };
        if !found || count == 0 || value.ptr.is_null() {
            return None;
        }
        // SAFETY: Envoy's value stays valid until the end of the hook or the
        // next header write; both end this borrow of `self`.
        Some(unsafe { value.bytes() })
    }

    fn headers(&self, header_type: u32) -> Vec<(&[u8], &[u8])> {
        // SAFETY: `self.raw` is the live filter of the current hook.
        let size =
            unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.raw, header_type) };
        let mut raw = vec![
            EnvoyHttpHeader {
                key_ptr: ptr::null(),
                key_length: 0,
                value_ptr: ptr::null(),
                value_length: 0,
            };
            size
        ];
        // SAFETY: `raw` has room for the `size` headers Envoy just counted.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_headers(self.raw, header_type, raw.as_mut_ptr())
        };
        if !ok {
            return Vec::new();
        }
        raw.iter()
            .map(|h| {
                let key = EnvoyBuffer {
                    ptr: h.key_ptr,
                    length: h.key_length,
                };
                let value = EnvoyBuffer {
                    ptr: h.value_ptr,
                    length: h.value_length,
                };
                // SAFETY: as in `header`: valid until the hook ends or a write.
                unsafe { (key.bytes(), value.bytes()) }
            })
            .collect()
    }

    fn write_header(
        &mut self,
        header_type: u32,
        name: &str,
        value: Option<&[u8]>,
    ) -> Result<(), HostError> {
        let value = value.map_or_else(ModuleBuffer::null, ModuleBuffer::of);
        // SAFETY: `self.raw` is the live filter; Envoy copies key and value.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.raw,
                header_type,
                ModuleBuffer::of(name.as_bytes()),
                value,
            )
        };
        if ok {
            Ok(())
        } else {
            Err(HostError)
        }
    }

    /// The first value of request header `name`.
    pub fn request_header(&self, name: &str) -> Option<&[u8]> {
        self.header(HEADER_REQUEST, name)
    }

    /// Every request header, in order.
    pub fn request_headers(&self) -> Vec<(&[u8], &[u8])> {
        self.headers(HEADER_REQUEST)
    }

    /// Replaces every value of request header `name` with `value`.
    pub fn set_request_header(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.write_header(HEADER_REQUEST, name, Some(value))
    }

    /// Removes every value of request header `name` (absent is fine).
    pub fn remove_request_header(&mut self, name: &str) -> Result<(), HostError> {
        self.write_header(HEADER_REQUEST, name, None)
    }

    /// The first value of response header `name`.
    pub fn response_header(&self, name: &str) -> Option<&[u8]> {
        self.header(HEADER_RESPONSE, name)
    }

    pub fn set_response_header(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.write_header(HEADER_RESPONSE, name, Some(value))
    }

    pub fn remove_response_header(&mut self, name: &str) -> Result<(), HostError> {
        self.write_header(HEADER_RESPONSE, name, None)
    }

    /// Adds a value to request header `name` (keeps the others).
    pub fn add_request_header(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        // SAFETY: `self.raw` is the live filter; Envoy copies key and value.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.raw,
                HEADER_REQUEST,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value),
            )
        };
        ok.then_some(()).ok_or(HostError)
    }

    /// Adds a value to response header `name`.
    pub fn add_response_header(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        // SAFETY: `self.raw` is the live filter; Envoy copies key and value.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.raw,
                HEADER_RESPONSE,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value),
            )
        };
        ok.then_some(()).ok_or(HostError)
    }

    /// A string attribute of the stream (`attribute`: abi.h's id).
    pub fn attribute(&self, attribute: Attribute) -> Option<&[u8]> {
        let mut value = EnvoyBuffer::empty();
        // SAFETY: `self.raw` is the live filter; `value` a valid out-pointer.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.raw,
                attribute as u32,
                &mut value,
            )
        };
        // SAFETY: Envoy's buffer, valid during the hook (this borrow).
        (found && !value.ptr.is_null()).then(|| unsafe { value.bytes() })
    }

    /// Stores bytes in the stream's filter state under `key` (readable by
    /// the upstream filters of the same request).
    pub fn set_filter_state(&mut self, key: &str, value: &[u8]) -> Result<(), HostError> {
        // SAFETY: `self.raw` is the live filter; Envoy copies key and value.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_set_filter_state_bytes(
                self.raw,
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value),
            )
        };
        ok.then_some(()).ok_or(HostError)
    }

    pub fn filter_state(&self, key: &str) -> Option<&[u8]> {
        let mut value = EnvoyBuffer::empty();
        // SAFETY: `self.raw` is the live filter; `value` a valid out-pointer.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_filter_state_bytes(
                self.raw,
                ModuleBuffer::of(key.as_bytes()),
                &mut value,
            )
        };
        // SAFETY: Envoy's buffer, valid during the hook (this borrow).
        (found && !value.ptr.is_null()).then(|| unsafe { value.bytes() })
    }

    /// Makes Envoy choose the route again (after header writes that
    /// decide it, such as the stamp's `:authority` and route header).
    pub fn clear_route_cache(&mut self) {
        // SAFETY: `self.raw` is the live filter.
        unsafe { envoy_dynamic_module_callback_http_clear_route_cache(self.raw) }
    }

    /// A handle to this stream for later hooks of other streams of the
    /// same worker (see [`StreamHandle::with`]).
    pub fn handle(&self) -> StreamHandle {
        StreamHandle {
            raw: self.raw as usize,
            _not_send: PhantomData,
        }
    }

    /// Answers the stream locally (sent when the hook returns; the last
    /// answer or resume asked for wins).
    pub fn send_response(&mut self, status: u16, headers: &[(&str, &[u8])], body: &[u8]) {
        self.deferred = Some(Deferred::SendResponse {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_string(), v.to_vec()))
                .collect(),
            body: body.to_vec(),
            details: "authstamp".to_string(),
        });
    }

    /// Resumes the paused request (when the hook returns).
    pub fn continue_decoding(&mut self) {
        self.deferred = Some(Deferred::ContinueDecoding);
    }

    /// Resumes the paused response (when the hook returns).
    pub fn continue_encoding(&mut self) {
        self.deferred = Some(Deferred::ContinueEncoding);
    }

    /// Sends an HTTP request to `cluster`; the answer arrives as
    /// [`HttpFilter::on_callout_done`] with the returned id. `headers` must
    /// include `:method`, `:path` and `host`.
    pub fn http_callout(
        &mut self,
        cluster: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
        timeout: Duration,
    ) -> Result<u64, CalloutError> {
        let mut raw: Vec<ModuleHttpHeader> = headers
            .iter()
            .map(|(n, v)| ModuleHttpHeader {
                key_ptr: n.as_ptr().cast(),
                key_length: n.len(),
                value_ptr: v.as_ptr().cast(),
                value_length: v.len(),
            })
            .collect();
        let mut id = 0u64;
        let timeout_ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        // SAFETY: `self.raw` is the live filter; every buffer points into
        // `headers`, `body` and `cluster`, alive for the call (Envoy copies
        // them into its request); `id` is a valid out-pointer.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_http_callout(
                self.raw,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                raw.as_mut_ptr(),
                raw.len(),
                ModuleBuffer::of(body),
                timeout_ms,
            )
        };
        match result {
            CALLOUT_INIT_SUCCESS => Ok(id),
            CALLOUT_INIT_MISSING_HEADERS => Err(CalloutError::MissingRequiredHeaders),
            CALLOUT_INIT_CLUSTER_NOT_FOUND => Err(CalloutError::ClusterNotFound),
            _ => Err(CalloutError::CannotCreateRequest),
        }
    }

    /// A handle that wakes this stream ([`HttpFilter::on_scheduled`]) from
    /// any thread; `None` if Envoy refuses one.
    pub fn scheduler(&self) -> Option<Scheduler> {
        // SAFETY: `self.raw` is the live filter; the result is owned by us.
        let raw = unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(self.raw) };
        NonNull::new(raw).map(|raw| Scheduler { raw })
    }

    /// The index of the worker thread this stream runs on.
    pub fn worker_index(&self) -> u32 {
        // SAFETY: `self.raw` is the live filter.
        unsafe { envoy_dynamic_module_callback_http_filter_get_worker_index(self.raw) }
    }

    /// Adds `value` to a counter defined in the stream's configuration.
    pub fn increment_counter(&self, id: MetricId, value: u64) -> Result<(), HostError> {
        // SAFETY: `self.raw` is the live filter; no labels.
        metrics_result(unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(
                self.raw,
                id.0,
                ptr::null_mut(),
                0,
                value,
            )
        })
    }

    pub fn set_gauge(&self, id: MetricId, value: u64) -> Result<(), HostError> {
        // SAFETY: `self.raw` is the live filter; no labels.
        metrics_result(unsafe {
            envoy_dynamic_module_callback_http_filter_set_gauge(
                self.raw,
                id.0,
                ptr::null_mut(),
                0,
                value,
            )
        })
    }

    pub fn record_histogram(&self, id: MetricId, value: u64) -> Result<(), HostError> {
        // SAFETY: `self.raw` is the live filter; no labels.
        metrics_result(unsafe {
            envoy_dynamic_module_callback_http_filter_record_histogram_value(
                self.raw,
                id.0,
                ptr::null_mut(),
                0,
                value,
            )
        })
    }
}

fn metrics_result(code: u32) -> Result<(), HostError> {
    if code == METRICS_SUCCESS {
        Ok(())
    } else {
        Err(HostError)
    }
}

/// A wake-up handle for one stream, usable from any thread. Waking a stream
/// that is gone is a no-op (Envoy's guarantee); dropping the handle frees it.
pub struct Scheduler {
    raw: NonNull<c_void>,
}

// SAFETY: abi.h: `scheduler_commit` "is safe to call from any thread"; the
// handle is deleted exactly once, by `Drop`.
unsafe impl Send for Scheduler {}
// SAFETY: `wake` only reads the pointer; see `Send`.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    /// Runs [`HttpFilter::on_scheduled`] with `event_id` on the stream's worker.
    pub fn wake(&self, event_id: u64) {
        // SAFETY: the handle came from `scheduler_new` and is not deleted yet.
        unsafe {
            envoy_dynamic_module_callback_http_filter_scheduler_commit(self.raw.as_ptr(), event_id)
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: deleted once, here; no `wake` can follow.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(self.raw.as_ptr()) }
    }
}

/// The filter configuration being created (main thread): its name, its
/// bytes, and the definition of its metrics.
pub struct ConfigContext<'hook> {
    raw: ConfigEnvoyPtr,
    /// The filter's `filter_name`.
    pub name: &'hook [u8],
    /// The filter's `filter_config` (a `StringValue`'s string, or JSON).
    pub config: &'hook [u8],
}

impl ConfigContext<'_> {
    fn define(
        &self,
        name: &str,
        define: unsafe extern "C" fn(
            ConfigEnvoyPtr,
            ModuleBuffer,
            *mut ModuleBuffer,
            usize,
            *mut usize,
        ) -> u32,
    ) -> Option<MetricId> {
        let mut id = 0usize;
        // SAFETY: `self.raw` is the configuration being created; the name is
        // alive for the call (Envoy copies it); `id` is a valid out-pointer.
        let code = unsafe {
            define(
                self.raw,
                ModuleBuffer::of(name.as_bytes()),
                ptr::null_mut(),
                0,
                &mut id,
            )
        };
        (code == METRICS_SUCCESS).then_some(MetricId(id))
    }

    /// Defines an Envoy counter (shown in `/stats`).
    pub fn define_counter(&self, name: &str) -> Option<MetricId> {
        self.define(
            name,
            envoy_dynamic_module_callback_http_filter_config_define_counter,
        )
    }

    pub fn define_gauge(&self, name: &str) -> Option<MetricId> {
        self.define(
            name,
            envoy_dynamic_module_callback_http_filter_config_define_gauge,
        )
    }

    pub fn define_histogram(&self, name: &str) -> Option<MetricId> {
        self.define(
            name,
            envoy_dynamic_module_callback_http_filter_config_define_histogram,
        )
    }

    /// A handle for configuration-wide metrics, for the factory to keep.
    pub fn handle(&self) -> ConfigHandle {
        ConfigHandle { raw: self.raw }
    }
}

/// Configuration-wide metrics, from any thread, without a stream.
pub struct ConfigHandle {
    raw: ConfigEnvoyPtr,
}

// SAFETY: Envoy keeps the configuration alive while its factory (which owns
// this handle) lives, and its stats are thread-safe (abi.h: the config
// metric calls need no stream and serve background tasks).
unsafe impl Send for ConfigHandle {}
// SAFETY: see `Send`; the handle is only read.
unsafe impl Sync for ConfigHandle {}

impl ConfigHandle {
    pub fn increment_gauge(&self, id: MetricId, value: u64) -> Result<(), HostError> {
        // SAFETY: `self.raw` is the live configuration; no labels.
        metrics_result(unsafe {
            envoy_dynamic_module_callback_http_filter_config_increment_gauge(
                self.raw,
                id.0,
                ptr::null_mut(),
                0,
                value,
            )
        })
    }

    pub fn decrement_gauge(&self, id: MetricId, value: u64) -> Result<(), HostError> {
        // SAFETY: `self.raw` is the live configuration; no labels.
        metrics_result(unsafe {
            envoy_dynamic_module_callback_http_filter_config_decrement_gauge(
                self.raw,
                id.0,
                ptr::null_mut(),
                0,
                value,
            )
        })
    }

    pub fn record_histogram(&self, id: MetricId, value: u64) -> Result<(), HostError> {
        // SAFETY: `self.raw` is the live configuration; no labels.
        metrics_result(unsafe {
            envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
                self.raw,
                id.0,
                ptr::null_mut(),
                0,
                value,
            )
        })
    }

    pub fn increment_counter(&self, id: MetricId, value: u64) -> Result<(), HostError> {
        // SAFETY: `self.raw` is the live configuration; no labels.
        metrics_result(unsafe {
            envoy_dynamic_module_callback_http_filter_config_increment_counter(
                self.raw,
                id.0,
                ptr::null_mut(),
                0,
                value,
            )
        })
    }

    pub fn set_gauge(&self, id: MetricId, value: u64) -> Result<(), HostError> {
        // SAFETY: `self.raw` is the live configuration; no labels.
        metrics_result(unsafe {
            envoy_dynamic_module_callback_http_filter_config_set_gauge(
                self.raw,
                id.0,
                ptr::null_mut(),
                0,
                value,
            )
        })
    }
}

/// String attributes read with [`Stream::attribute`] (abi.h
/// `envoy_dynamic_module_type_attribute_id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Attribute {
    /// `connection.uri_san_peer_certificate`
    ConnectionUriSanPeerCertificate = 37,
}

thread_local! {
    /// The streams of this worker thread between `on_http_filter_new` and
    /// `on_http_filter_destroy`: the only pointers a [`StreamHandle`] may
    /// turn back into a [`Stream`].
    static LIVE_STREAMS: RefCell<std::collections::HashMap<usize, usize>> =
        RefCell::new(std::collections::HashMap::new());
}

/// Names a stream of this worker thread; usable while the stream lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamHandle {
    raw: usize,
    /// Streams belong to their worker thread.
    _not_send: PhantomData<*const ()>,
}

impl StreamHandle {
    /// Runs `f` on the stream if it still lives (on this thread) and is not
    /// inside one of its own hooks, then what `f` deferred (at once: its
    /// resumes may run the stream's hooks); `None` otherwise.
    pub fn with<R>(self, f: impl FnOnce(&mut Stream<'_>) -> R) -> Option<R> {
        let slot = LIVE_STREAMS
            .try_with(|live| live.borrow().get(&self.raw).copied())
            .ok()
            .flatten()?;
        // SAFETY: `slot` is the `FilterSlot` registered with this live
        // stream, freed only after its removal from `LIVE_STREAMS`.
        let slot = unsafe { slot_ref(slot as FilterModulePtr) };
        // Inside its own hook the stream's `Stream` exists already, and with
        // it borrowed header values a second handle could invalidate.
        if slot.filter.try_borrow_mut().is_err() {
            return None;
        }
        let mut stream = Stream {
            raw: self.raw as FilterEnvoyPtr,
            deferred: None,
            _hook: PhantomData,
        };
        let result = f(&mut stream);
        if let Some(deferred) = stream.deferred.take() {
            run_deferred(stream.raw, deferred);
        }
        Some(result)
    }
}

/// Runs a deferred action on the stream, after the filter was released.
fn run_deferred(raw: FilterEnvoyPtr, deferred: Deferred) {
    match deferred {
        // SAFETY: `raw` is the live filter of the current hook.
        Deferred::ContinueDecoding => unsafe {
            envoy_dynamic_module_callback_http_filter_continue_decoding(raw)
        },
        // SAFETY: as above.
        Deferred::ContinueEncoding => unsafe {
            envoy_dynamic_module_callback_http_filter_continue_encoding(raw)
        },
        Deferred::SendResponse {
            status,
            headers,
            body,
            details,
        } => {
            let mut raw_headers: Vec<ModuleHttpHeader> = headers
                .iter()
                .map(|(n, v)| ModuleHttpHeader {
                    key_ptr: n.as_ptr().cast(),
                    key_length: n.len(),
                    value_ptr: v.as_ptr().cast(),
                    value_length: v.len(),
                })
                .collect();
            // SAFETY: `raw` is the live filter; the header, body and details
            // buffers are alive for the call and Envoy copies them.
            unsafe {
                envoy_dynamic_module_callback_http_send_response(
                    raw,
                    u32::from(status),
                    raw_headers.as_mut_ptr(),
                    raw_headers.len(),
                    ModuleBuffer::of(&body),
                    ModuleBuffer::of(details.as_bytes()),
                )
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Module state behind Envoy's pointers
// ---------------------------------------------------------------------------

/// The module's side of one filter configuration.
struct ConfigSlot {
    factory: Box<dyn FilterFactory>,
}

/// An event that arrived while the filter was busy in another hook of the
/// same stream (Envoy calls back synchronously from some callbacks): it is
/// delivered as soon as that hook returns.
enum Queued {
    CalloutDone(u64, CalloutResponse),
    Scheduled(u64),
}

/// The module's side of one stream.
struct FilterSlot {
    /// `None` once a panic disabled the filter: later hooks pass through.
    filter: RefCell<Option<Box<dyn HttpFilter>>>,
    queued: RefCell<VecDeque<Queued>>,
    /// The 500 of a panic was sent (once per stream).
    failure_sent: Cell<bool>,
    /// Envoy's pointer of the stream (its key in `LIVE_STREAMS`).
    envoy: usize,
}

/// How a call into the stream's filter went.
enum Outcome<R> {
    Done(R),
    /// The filter is in another hook of this stream (a re-entrant call).
    Busy,
    /// A panic disabled the filter earlier.
    Disabled,
    /// The filter panicked now; the stream got its 500 reply.
    Panicked,
}

/// SAFETY (caller): `slot` is non-null and is the pointer that
/// `on_http_filter_new` made from a `Box<FilterSlot>`, not yet destroyed.
/// Envoy calls a stream's hooks on its worker thread only, one at a time
/// (re-entrant calls from inside a callback included), so a shared
/// reference is valid; mutation goes through `RefCell`.
unsafe fn slot_ref<'a>(slot: FilterModulePtr) -> &'a FilterSlot {
    // SAFETY: as the caller promises.
    unsafe { &*slot.cast::<FilterSlot>() }
}

/// Calls `f` on the stream's filter behind the panic barrier, then runs
/// what it deferred and delivers queued events.
fn with_filter<R>(
    raw: FilterEnvoyPtr,
    slot: &FilterSlot,
    f: impl FnOnce(&mut dyn HttpFilter, &mut Stream<'_>) -> R,
) -> Outcome<R> {
    let mut stream = Stream {
        raw,
        deferred: None,
        _hook: PhantomData,
    };
    let outcome = {
        let Ok(mut guard) = slot.filter.try_borrow_mut() else {
            return Outcome::Busy;
        };
        let Some(filter) = guard.as_mut() else {
            return Outcome::Disabled;
        };
        match catch_unwind(AssertUnwindSafe(|| f(filter.as_mut(), &mut stream))) {
            Ok(result) => Outcome::Done(result),
            Err(_) => {
                // Fail closed: no more filter code on this stream (its
                // `Drop` runs filter code too: behind the barrier as well).
                let disabled = guard.take();
                let _ = catch_unwind(AssertUnwindSafe(move || drop(disabled)));
                Outcome::Panicked
            }
        }
    };
    match outcome {
        Outcome::Panicked => fail_closed(raw, slot),
        _ => {
            if let Some(deferred) = stream.deferred.take() {
                run_deferred(raw, deferred);
            }
            drain_queue(raw, slot);
        }
    }
    outcome
}

/// Delivers events that came in while the filter was busy.
fn drain_queue(raw: FilterEnvoyPtr, slot: &FilterSlot) {
    loop {
        let next = slot
            .queued
            .try_borrow_mut()
            .ok()
            .and_then(|mut q| q.pop_front());
        let Some(event) = next else { return };
        match event {
            Queued::CalloutDone(id, response) => {
                with_filter(raw, slot, |f, s| f.on_callout_done(s, id, response));
            }
            Queued::Scheduled(id) => {
                with_filter(raw, slot, |f, s| f.on_scheduled(s, id));
            }
        }
    }
}

/// After a panic: answer 500 `internal` once and forget pending events.
fn fail_closed(raw: FilterEnvoyPtr, slot: &FilterSlot) {
    if slot.failure_sent.replace(true) {
        return;
    }
    if let Ok(mut queued) = slot.queued.try_borrow_mut() {
        queued.clear();
    }
    let (status, headers, body) = crate::reply::internal_error();
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    let mut stream = Stream {
        raw,
        deferred: None,
        _hook: PhantomData,
    };
    stream.send_response(status, &headers, &body);
    if let Some(deferred) = stream.deferred.take() {
        run_deferred(raw, deferred);
    }
}

/// Copies a callout answer out of Envoy's buffers.
///
/// SAFETY (caller): the pointers and sizes are those Envoy passed to the
/// current `http_callout_done` hook (valid until it returns, may be null).
unsafe fn callout_response(
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body: *const EnvoyBuffer,
    body_size: usize,
) -> CalloutResponse {
    let headers: &[EnvoyHttpHeader] = if headers.is_null() {
        &[]
    } else {
        // SAFETY: Envoy passes `headers_size` headers at `headers`.
        unsafe { std::slice::from_raw_parts(headers, headers_size) }
    };
    let chunks: &[EnvoyBuffer] = if body.is_null() {
        &[]
    } else {
        // SAFETY: Envoy passes `body_size` chunks at `body`.
        unsafe { std::slice::from_raw_parts(body, body_size) }
    };
    let headers = headers
        .iter()
        .map(|h| {
            let key = EnvoyBuffer {
                ptr: h.key_ptr,
                length: h.key_length,
            };
            let value = EnvoyBuffer {
                ptr: h.value_ptr,
                length: h.value_length,
            };
            // SAFETY: Envoy's header buffers, valid during the hook.
            unsafe {
                (
                    String::from_utf8_lossy(key.bytes()).into_owned(),
                    value.bytes().to_vec(),
                )
            }
        })
        .collect();
    let mut bytes = Vec::with_capacity(chunks.iter().map(|c| c.length).sum());
    for chunk in chunks {
        // SAFETY: Envoy's body chunks, valid during the hook.
        bytes.extend_from_slice(unsafe { chunk.bytes() });
    }
    CalloutResponse {
        result: match result {
            CALLOUT_RESULT_SUCCESS => CalloutResult::Success,
            CALLOUT_RESULT_RESET => CalloutResult::Reset,
            _ => CalloutResult::ExceedResponseBufferLimit,
        },
        headers,
        body: bytes,
    }
}

// ---------------------------------------------------------------------------
// Event hooks (implemented by the module, called by Envoy)
// ---------------------------------------------------------------------------

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    crate::install_hooks();
    ABI_VERSION.as_ptr().cast()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ConfigModulePtr {
    let made = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: Envoy's name and config buffers, valid during this hook.
        let context = unsafe {
            ConfigContext {
                raw: config_envoy,
                name: name.bytes(),
                config: config.bytes(),
            }
        };
        crate::new_factory(&context)
    }));
    match made {
        Ok(Ok(factory)) => Box::into_raw(Box::new(ConfigSlot { factory }))
            .cast_const()
            .cast(),
        Ok(Err(message)) => {
            log(
                LogLevel::Error,
                &format!("authstamp: bad configuration: {message}"),
            );
            ptr::null()
        }
        Err(_) => {
            log(
                LogLevel::Error,
                "authstamp: the configuration could not be loaded (internal error)",
            );
            ptr::null()
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: ConfigModulePtr) {
    if config.is_null() {
        return;
    }
    // SAFETY: `config` is the `Box<ConfigSlot>` made by `config_new`;
    // Envoy destroys it once, after every stream of it.
    let slot = unsafe { Box::from_raw(config.cast_mut().cast::<ConfigSlot>()) };
    let _ = catch_unwind(AssertUnwindSafe(move || drop(slot)));
}

/// Per-route configuration is not supported: refused.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const c_void {
    log(
        LogLevel::Error,
        "authstamp: per-route configuration is not supported",
    );
    ptr::null()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(
    _config: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ConfigModulePtr,
    filter_envoy: FilterEnvoyPtr,
) -> FilterModulePtr {
    if config.is_null() || filter_envoy.is_null() {
        return ptr::null();
    }
    // SAFETY: `config` is the live `ConfigSlot` of `config_new` (Envoy
    // keeps it until every stream of it is destroyed); shared across
    // workers, hence `FilterFactory: Sync`.
    let config = unsafe { &*config.cast::<ConfigSlot>() };
    let mut stream = Stream {
        raw: filter_envoy,
        deferred: None,
        _hook: PhantomData,
    };
    // A panic here leaves the filter disabled from the start: its request
    // hook answers 500.
    let filter = catch_unwind(AssertUnwindSafe(|| config.factory.new_filter(&mut stream))).ok();
    let slot = Box::new(FilterSlot {
        filter: RefCell::new(filter),
        queued: RefCell::new(VecDeque::new()),
        failure_sent: Cell::new(false),
        envoy: filter_envoy as usize,
    });
    let slot = Box::into_raw(slot);
    let _ = LIVE_STREAMS.try_with(|live| {
        live.borrow_mut()
            .insert(filter_envoy as usize, slot as usize)
    });
    slot.cast_const().cast()
}

fn headers_status(status: HeadersStatus) -> u32 {
    match status {
        HeadersStatus::Continue => HEADERS_CONTINUE,
        HeadersStatus::Stop => HEADERS_STOP_ITERATION,
    }
}

fn body_status(status: BodyStatus) -> u32 {
    match status {
        BodyStatus::Continue => BODY_CONTINUE,
        BodyStatus::StopAndBuffer => BODY_STOP_AND_WATERMARK,
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    if filter.is_null() {
        return HEADERS_STOP_ITERATION;
    }
    // SAFETY: a pointer of `on_http_filter_new`, not yet destroyed.
    let slot = unsafe { slot_ref(filter) };
    match with_filter(filter_envoy, slot, |f, s| {
        f.on_request_headers(s, end_of_stream)
    }) {
        Outcome::Done(status) => headers_status(status),
        Outcome::Disabled => {
            // `new_filter` panicked: this is the first chance to answer.
            fail_closed(filter_envoy, slot);
            HEADERS_STOP_ITERATION
        }
        Outcome::Busy | Outcome::Panicked => HEADERS_STOP_ITERATION,
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    if filter.is_null() {
        return BODY_STOP_AND_WATERMARK;
    }
    // SAFETY: a pointer of `on_http_filter_new`, not yet destroyed.
    let slot = unsafe { slot_ref(filter) };
    match with_filter(filter_envoy, slot, |f, s| {
        f.on_request_body(s, end_of_stream)
    }) {
        Outcome::Done(status) => body_status(status),
        // A failed stream's body goes nowhere.
        Outcome::Busy | Outcome::Disabled | Outcome::Panicked => BODY_STOP_AND_WATERMARK,
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
) -> u32 {
    if filter.is_null() {
        return TRAILERS_STOP_ITERATION;
    }
    // SAFETY: a pointer of `on_http_filter_new`, not yet destroyed.
    let slot = unsafe { slot_ref(filter) };
    match with_filter(filter_envoy, slot, |f, s| f.on_request_trailers(s)) {
        Outcome::Done(HeadersStatus::Continue) => TRAILERS_CONTINUE,
        _ => TRAILERS_STOP_ITERATION,
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    if filter.is_null() {
        return HEADERS_CONTINUE;
    }
    // SAFETY: a pointer of `on_http_filter_new`, not yet destroyed.
    let slot = unsafe { slot_ref(filter) };
    match with_filter(filter_envoy, slot, |f, s| {
        f.on_response_headers(s, end_of_stream)
    }) {
        Outcome::Done(status) => headers_status(status),
        // Our own local reply (sent from inside a hook, or after a panic)
        // passes unchanged.
        Outcome::Busy | Outcome::Disabled => HEADERS_CONTINUE,
        Outcome::Panicked => HEADERS_STOP_ITERATION,
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    if filter.is_null() {
        return BODY_CONTINUE;
    }
    // SAFETY: a pointer of `on_http_filter_new`, not yet destroyed.
    let slot = unsafe { slot_ref(filter) };
    match with_filter(filter_envoy, slot, |f, s| {
        f.on_response_body(s, end_of_stream)
    }) {
        Outcome::Done(status) => body_status(status),
        Outcome::Busy | Outcome::Disabled => BODY_CONTINUE,
        Outcome::Panicked => BODY_STOP_AND_WATERMARK,
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
) -> u32 {
    TRAILERS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
) {
    if filter.is_null() {
        return;
    }
    // SAFETY: a pointer of `on_http_filter_new`, not yet destroyed.
    let slot = unsafe { slot_ref(filter) };
    with_filter(filter_envoy, slot, |f, s| f.on_stream_complete(s));
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: FilterModulePtr) {
    if filter.is_null() {
        return;
    }
    // SAFETY: `filter` is the `Box<FilterSlot>` of `on_http_filter_new`;
    // Envoy destroys it once, last, on the stream's worker.
    let slot = unsafe { Box::from_raw(filter.cast_mut().cast::<FilterSlot>()) };
    let _ = LIVE_STREAMS.try_with(|live| live.borrow_mut().remove(&slot.envoy));
    let _ = catch_unwind(AssertUnwindSafe(move || drop(slot)));
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    callout_id: u64,
    result: u32,
    headers: *mut EnvoyHttpHeader,
    headers_size: usize,
    body_chunks: *mut EnvoyBuffer,
    body_chunks_size: usize,
) {
    if filter.is_null() {
        return;
    }
    // SAFETY: a pointer of `on_http_filter_new`, not yet destroyed.
    let slot = unsafe { slot_ref(filter) };
    let response = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the buffers Envoy passed to this hook, read before it returns.
        unsafe { callout_response(result, headers, headers_size, body_chunks, body_chunks_size) }
    }));
    let Ok(response) = response else {
        fail_closed(filter_envoy, slot);
        return;
    };
    if slot.filter.try_borrow_mut().is_err() {
        // Answered from inside `http_callout` (an immediate failure): deliver
        // when that hook returns.
        if let Ok(mut queued) = slot.queued.try_borrow_mut() {
            queued.push_back(Queued::CalloutDone(callout_id, response));
        }
        return;
    }
    with_filter(filter_envoy, slot, |f, s| {
        f.on_callout_done(s, callout_id, response)
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    filter_envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    event_id: u64,
) {
    if filter.is_null() {
        return;
    }
    // SAFETY: a pointer of `on_http_filter_new`, not yet destroyed.
    let slot = unsafe { slot_ref(filter) };
    if slot.filter.try_borrow_mut().is_err() {
        if let Ok(mut queued) = slot.queued.try_borrow_mut() {
            queued.push_back(Queued::Scheduled(event_id));
        }
        return;
    }
    with_filter(filter_envoy, slot, |f, s| f.on_scheduled(s, event_id));
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _response_code: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> u32 {
    LOCAL_REPLY_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
) {
}

// Streamed callouts and configuration-level callouts and schedulers are not
// used; Envoy resolves these hooks, so they exist and do nothing.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
    _headers: *mut EnvoyHttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
    _trailers: *mut EnvoyHttpHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: ConfigEnvoyPtr,
    _config: ConfigModulePtr,
    _event_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: ConfigEnvoyPtr,
    _config: ConfigModulePtr,
    _callout_id: u64,
    _result: u32,
    _headers: *mut EnvoyHttpHeader,
    _headers_size: usize,
    _body_chunks: *mut EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _config_envoy: ConfigEnvoyPtr,
    _config: ConfigModulePtr,
    _stream_id: u64,
    _headers: *mut EnvoyHttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _config_envoy: ConfigEnvoyPtr,
    _config: ConfigModulePtr,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _config_envoy: ConfigEnvoyPtr,
    _config: ConfigModulePtr,
    _stream_id: u64,
    _trailers: *mut EnvoyHttpHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _config_envoy: ConfigEnvoyPtr,
    _config: ConfigModulePtr,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _config_envoy: ConfigEnvoyPtr,
    _config: ConfigModulePtr,
    _stream_id: u64,
    _reason: u32,
) {
}
