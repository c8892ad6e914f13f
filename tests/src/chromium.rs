//! Headless Chromium (Debian's `chromium`, or `CHROMIUM_BIN`) driven through
//! WebDriver: Debian's `chromedriver` (or `CHROMEDRIVER_BIN`) and the
//! `fantoccini` client. Navigate, evaluate JavaScript, click, type, wait
//! for a condition: enough to click through a connect flow the way a user
//! does, with no browser download and no Node.js.

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Chromium {
    client: Client,
    /// chromedriver, the leader of a process group that holds Chromium too.
    driver: Child,
    _profile: tempfile::TempDir,
}

fn binary(env: &str, default: &str, package: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.is_file(),
        "{} not found: apt-get install -y {package} (scripts/install-deps.sh) or set {env}",
        path.display()
    );
    path
}

/// The Chromium binary: `CHROMIUM_BIN`, else `/usr/bin/chromium`.
pub fn chromium_bin() -> PathBuf {
    binary("CHROMIUM_BIN", "/usr/bin/chromium", "chromium")
}

/// The WebDriver server: `CHROMEDRIVER_BIN`, else `/usr/bin/chromedriver`.
pub fn chromedriver_bin() -> PathBuf {
    binary(
        "CHROMEDRIVER_BIN",
        "/usr/bin/chromedriver",
        "chromium-driver",
    )
}

/// A page viewport in CSS pixels at device pixel ratio 1; `phone` lays
/// pages out as a mobile browser does (the viewport meta tag applies).
#[derive(Clone, Copy, Debug)]
pub struct Viewport {
    pub width: u32,
    pub height: u32,
    pub phone: bool,
}

impl Viewport {
    pub const DESKTOP: Viewport = Viewport {
        width: 1280,
        height: 900,
        phone: false,
    };
    pub const PHONE: Viewport = Viewport {
        width: 375,
        height: 812,
        phone: true,
    };
}

impl Chromium {
    /// Starts chromedriver and through it a headless Chromium with a fresh
    /// profile; logs go to `log_dir/chromedriver.log`.
    pub async fn launch(log_dir: &Path) -> Chromium {
        Self::launch_with(log_dir, None).await
    }

    /// [`Chromium::launch`] with pages laid out at `viewport`.
    pub async fn launch_at(log_dir: &Path, viewport: Viewport) -> Chromium {
        Self::launch_with(log_dir, Some(viewport)).await
    }

    async fn launch_with(log_dir: &Path, viewport: Option<Viewport>) -> Chromium {
        let profile = tempfile::tempdir().expect("profile dir");
        let port = crate::process::free_port();
        let driver = Command::new(chromedriver_bin())
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                log_dir.join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: Drop ends chromedriver and Chromium together.
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let webdriver = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status: Option<Value> = match http.get(format!("{webdriver}/status")).send().await {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            if status.is_some_and(|s| s["value"]["ready"] == true) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not get ready (see chromedriver.log)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut capabilities = serde_json::Map::new();
        let mut options = json!({
                "binary": chromium_bin(),
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-extensions",
                    "--no-first-run",
                    "--no-default-browser-check",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
        });
        if let Some(v) = viewport {
            // Device metrics, not a window size: exact CSS pixels at ratio 1.
            options["mobileEmulation"] = json!({"deviceMetrics": {
                "width": v.width, "height": v.height, "pixelRatio": 1.0,
                "mobile": v.phone, "touch": v.phone,
            }});
        }
        capabilities.insert("goog:chromeOptions".into(), options);
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&webdriver)
            .await
            .expect("a WebDriver session with headless Chromium");
        Chromium {
            client,
            driver,
            _profile: profile,
        }
    }

    pub async fn navigate(&mut self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// Evaluates `expression` in the page; its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        self.client
            .execute(&format!("return ({expression});"), Vec::new())
            .await
            .unwrap_or_else(|e| panic!("evaluating {expression}: {e}"))
    }

    /// The text of the element with `id`, as a user sees it.
    pub async fn text(&mut self, id: &str) -> String {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("#{id}: {e}"))
            .text()
            .await
            .expect("element text")
    }

    /// The texts of the elements matching the CSS `selector`.
    pub async fn texts(&mut self, selector: &str) -> Vec<String> {
        let mut texts = Vec::new();
        for element in self
            .client
            .find_all(Locator::Css(selector))
            .await
            .expect("find elements")
        {
            texts.push(element.text().await.expect("element text"));
        }
        texts
    }

    /// Clicks the element with `id`.
    pub async fn click(&mut self, id: &str) {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("#{id}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click #{id}: {e}"));
    }

    /// Types `text` into the element with `id`, as keystrokes would.
    pub async fn type_into(&mut self, id: &str, text: &str) {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("#{id}: {e}"))
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into #{id}: {e}"));
    }

    /// A PNG of the viewport as it is shown.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        self.client.screenshot().await.expect("screenshot")
    }

    pub async fn url(&mut self) -> url::Url {
        self.client.current_url().await.expect("current URL")
    }

    /// Waits (at most 15 s) until `expression` is truthy in the page;
    /// navigations in between are fine.
    pub async fn wait_for(&mut self, what: &str, expression: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let probe = format!(
            "(() => {{ try {{ return !!({expression}); }} catch (e) {{ return false; }} }})()"
        );
        loop {
            // A navigation under way can fail the script: not yet, then.
            let value = self
                .client
                .execute(&format!("return {probe};"), Vec::new())
                .await
                .unwrap_or(Value::Bool(false));
            if value == Value::Bool(true) {
                return;
            }
            if Instant::now() >= deadline {
                let url = self.eval("location.href").await;
                let body = self
                    .eval("document.body ? document.body.innerText : ''")
                    .await;
                panic!("timed out waiting for {what} at {url}: {body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // SIGKILL to chromedriver's process group: chromedriver, Chromium and
        // its helpers (a WebDriver session is not ended from a sync Drop).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
