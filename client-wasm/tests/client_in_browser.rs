//! The npm package's public API in headless Chromium, against the real reference server.
//!
//! Every scenario is JavaScript (`client_in_browser.js` beside this file) that does what a web app does:
//! `new Client({...})`, `start()`, `await client.request(...)`, callbacks, `AbortController`, `close()`. The only
//! Rust here hands it the exported `Client` class (the constructor of a `Client` made through the same binding,
//! never started) and the servers' addresses, then awaits the scenario's promise; a rejection fails the test
//! with the scenario's message.
//!
//! Servers, started by `scripts/test.sh` and baked in at build time:
//! - `SOCKEYE_TEST_SERVER`: `sockeye-server --addr 127.0.0.1:0` → `ws://127.0.0.1:PORT/ws`;
//! - `SOCKEYE_TEST_AUTH_SERVER`: `sockeye-server --addr 127.0.0.1:0 --token secret` → `ws://127.0.0.1:PORT/ws`.
//!
//! "The server restarts" is simulated from inside the page: the server closes the connection (its `close` method,
//! code 1012 "service restart"), and `url(attempt)` points the following attempts at a port nobody listens on
//! (`ws://127.0.0.1:1/ws`, refused at once) until the test lets the client through to the live server again.
//!
//! Run: `CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner CHROMEDRIVER=/usr/bin/chromedriver
//! SOCKEYE_TEST_SERVER=... SOCKEYE_TEST_AUTH_SERVER=... cargo test -p sockeye-wasm --target wasm32-unknown-unknown`.

#![cfg(target_arch = "wasm32")]

use js_sys::{Object, Promise, Reflect};
use sockeye_wasm::Client;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen(module = "/tests/client_in_browser.js")]
extern "C" {
    /// Runs scenario `name` with the exported class and the environment; resolves when it passed.
    #[wasm_bindgen(js_name = runScenario)]
    fn run_scenario(name: &str, client_class: &JsValue, env: &JsValue) -> Promise;
}

const SERVER: Option<&str> = option_env!("SOCKEYE_TEST_SERVER");
const AUTH_SERVER: Option<&str> = option_env!("SOCKEYE_TEST_AUTH_SERVER");

/// The exported `Client` class, as `import { Client } from "@sockeye/client"` gives it to an application.
fn client_class() -> JsValue {
    let options = Object::new();
    Reflect::set(&options, &"url".into(), &"ws://127.0.0.1:1/ws".into()).unwrap();
    let probe: JsValue = Client::new(options.into()).expect("valid options").into();
    let class = Reflect::get(&probe, &"constructor".into()).unwrap();
    // Free the probe through the JS API too (it was never started).
    let free: js_sys::Function = Reflect::get(&probe, &"free".into()).unwrap().into();
    free.call0(&probe).unwrap();
    class
}

async fn scenario(name: &str) {
    let env = Object::new();
    let server = SERVER.unwrap_or_else(|| {
        panic!("SOCKEYE_TEST_SERVER was not set at build time: scripts/test.sh starts `sockeye-server --addr 127.0.0.1:0` and exports it")
    });
    Reflect::set(&env, &"server".into(), &server.into()).unwrap();
    if let Some(auth) = AUTH_SERVER {
        Reflect::set(&env, &"authServer".into(), &auth.into()).unwrap();
    }
    if let Err(e) = JsFuture::from(run_scenario(name, &client_class(), &env)).await {
        let message = Reflect::get(&e, &"stack".into())
            .ok()
            .and_then(|s| s.as_string())
            .or_else(|| e.as_string())
            .unwrap_or_else(|| format!("{e:?}"));
        panic!("scenario {name} failed: {message}");
    }
}

#[wasm_bindgen_test]
async fn ready_handshake_reaches_ready_through_every_state() {
    scenario("readyHandshake").await;
}

#[wasm_bindgen_test]
async fn request_resolves_with_the_reply_and_server_errors_reject_with_server_error() {
    scenario("requestResponse").await;
}

#[wasm_bindgen_test]
async fn payloads_round_trip_as_cbor_and_bytes_stay_binary() {
    scenario("payloadRoundTrip").await;
}

#[wasm_bindgen_test]
async fn request_times_out_with_timeout_error() {
    scenario("requestTimeout").await;
}

#[wasm_bindgen_test]
async fn abort_signal_cancels_a_request_with_abort_error() {
    scenario("abortSignal").await;
}

#[wasm_bindgen_test]
async fn server_initiated_close_reconnects_to_ready() {
    scenario("serverCloseReconnects").await;
}

#[wasm_bindgen_test]
async fn offline_queue_is_flushed_in_order_after_the_server_comes_back() {
    scenario("offlineQueueFlushedInOrder").await;
}

#[wasm_bindgen_test]
async fn subscription_resumes_after_reconnect() {
    scenario("subscriptionResumes").await;
}

#[wasm_bindgen_test]
async fn auth_failure_4003_is_terminal_with_its_reason() {
    if AUTH_SERVER.is_none() {
        panic!("SOCKEYE_TEST_AUTH_SERVER was not set at build time: scripts/test.sh starts `sockeye-server --addr 127.0.0.1:0 --token secret` and exports it");
    }
    scenario("authFailureIsTerminal").await;
}

#[wasm_bindgen_test]
async fn wait_for_status_resolves_and_times_out() {
    scenario("waitForStatus").await;
}

#[wasm_bindgen_test]
async fn large_payload_is_fragmented_and_reassembled() {
    scenario("fragmentation").await;
}

#[wasm_bindgen_test]
async fn close_leaves_no_timers_listeners_or_transitions() {
    scenario("closeLeavesNothing").await;
}

#[wasm_bindgen_test]
async fn freeing_a_client_closes_its_socket() {
    scenario("freeClosesSocket").await;
}

#[wasm_bindgen_test]
async fn online_event_cuts_backoff_short_and_offline_burns_no_attempts() {
    scenario("browserAwareness").await;
}

#[wasm_bindgen_test]
async fn invalid_options_throw_type_errors_naming_the_option() {
    scenario("invalidOptions").await;
}

#[wasm_bindgen_test]
async fn full_offline_queue_throws_queue_full_error() {
    scenario("queueFull").await;
}

#[wasm_bindgen_test]
async fn server_messages_reach_on_message_handlers() {
    scenario("serverMessages").await;
}

#[wasm_bindgen_test]
async fn server_errs_are_server_errors_whatever_their_code() {
    scenario("serverErrorsAreServerErrors").await;
}

#[wasm_bindgen_test]
async fn callbacks_may_call_back_into_the_client() {
    scenario("reentrantCallbacks").await;
}

#[wasm_bindgen_test]
async fn data_that_fails_to_encode_rejects_and_leaves_the_client_usable() {
    scenario("encodeFailuresReject").await;
}

#[wasm_bindgen_test]
async fn an_application_websocket_may_call_into_the_client_from_its_constructor() {
    scenario("appWebSocketCallsBack").await;
}

#[wasm_bindgen_test]
async fn callbacks_run_by_the_timer_may_unsubscribe_and_abort() {
    scenario("callbacksFromTheTimerMayUnsubscribeAndAbort").await;
}

#[wasm_bindgen_test]
async fn subscribe_and_publish_options_are_checked_and_acked_publishes_reject_typed() {
    scenario("subscribeAndPublishOptions").await;
}

#[wasm_bindgen_test]
async fn a_page_kept_away_while_events_are_published_gets_each_once_then_on_resumed() {
    scenario("resumeDeliversEveryMissedEventOnce").await;
}

#[wasm_bindgen_test]
async fn a_page_away_longer_than_the_history_reaches_hears_the_loss_through_on_gap() {
    scenario("resumeReportsAGapWhenHistoryIsTooShort").await;
}
