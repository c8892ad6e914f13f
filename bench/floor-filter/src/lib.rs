//! Benchmark only: the floor of a proxy-wasm HTTP filter in Envoy. The
//! plugin configuration picks what a request costs:
//!
//! - `noop`: nothing (Envoy still creates a context and calls the VM on
//!   every stream event);
//! - `stamp`: sets `authorization` to a constant with one host call, the
//!   least a Wasm filter can do to stamp a credential.

#[cfg(target_arch = "wasm32")]
mod glue {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType};

    const CREDENTIAL: &str = "Bearer bench-static-token-0123456789abcdef";

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { stamp: false }) });
    }}

    struct Root {
        stamp: bool,
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            let config = self.get_plugin_configuration().unwrap_or_default();
            self.stamp = config.trim_ascii() == b"stamp";
            true
        }

        fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Stream { stamp: self.stamp }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Stream {
        stamp: bool,
    }

    impl Context for Stream {}

    impl HttpContext for Stream {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            if self.stamp {
                self.set_http_request_header("authorization", Some(CREDENTIAL));
            }
            Action::Continue
        }
    }
}
