//! The test harness of the LLM twin platform. A dev-dependency only: no library or binary of the
//! platform links it.
//!
//! - [`process`]: free ports, and the watchdog that stops a server (and removes its data) when
//!   the test process that started it ends, however it ends.
//! - [`tansu`], [`clickhouse`], [`qdrant`]: real servers started on free ports, one per test
//!   process: the Tansu Kafka-protocol broker, a ClickHouse server, a Qdrant server.
//! - [`fixture`]: a local HTTP server that plays the platforms the crawlers read.
//! - [`documents`]: raw-document fixtures, and the 76-article corpus (or a generated one of the
//!   same shape where the corpus is absent), whole or cut into passages.
//! - [`python`]: the Python reference environment (transformers, PEFT) of interop tests.
//! - [`vectors`]: how closely two embedders agree (cosine, recall@k of their searches).
//! - [`contract_suite!`]: runs one contract test suite against several backends.

pub mod clickhouse;
pub mod documents;
pub mod fixture;
pub mod process;
pub mod python;
pub mod qdrant;
pub mod tansu;
pub mod vectors;

pub use fixture::{FixtureServer, Route, Seen};

/// A backend under test: the handle the contract tests get, and whatever must live as long as
/// the test (a temporary folder, a server).
pub struct Backend<T> {
    /// What each test receives (a clone of it).
    pub handle: T,
    /// Kept alive until the test ends.
    pub guard: Option<Box<dyn std::any::Any + Send>>,
}

impl<T> Backend<T> {
    /// A backend that needs nothing kept alive.
    pub fn new(handle: T) -> Self {
        Self {
            handle,
            guard: None,
        }
    }

    /// A backend whose `guard` (a temporary folder...) lives as long as the test.
    pub fn with_guard(handle: T, guard: impl std::any::Any + Send) -> Self {
        Self {
            handle,
            guard: Some(Box::new(guard)),
        }
    }
}

/// One contract suite against several backends: a module per backend, a test per contract
/// function in each. Each backend is an `async fn NAME() -> Option<Backend<T>>` beside the
/// call (`None`: the backend is not available here and the function said why, so the test is
/// skipped); each test is an `async fn TEST(handle: T)`.
///
/// ```text
/// twin_testkit::contract_suite! {
///     backends: [embedded, clickhouse],
///     tests: [writes_are_idempotent, a_tombstone_removes_the_document],
/// }
/// ```
#[macro_export]
macro_rules! contract_suite {
    (backends: [$($backend:ident),+ $(,)?], tests: $tests:tt $(,)?) => {
        $( $crate::contract_suite!(@backend $backend: $tests); )+
    };
    (@backend $backend:ident: [$($test:ident),+ $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let Some(backend) = super::$backend().await else {
                        return;
                    };
                    super::$test(backend.handle.clone()).await;
                    drop(backend);
                }
            )+
        }
    };
}
