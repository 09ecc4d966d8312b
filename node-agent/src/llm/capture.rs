//! llama.cpp explains a failed load only in its log (a truncated file: "tensor … data is not
//! within the file bounds"). While a model loads, its warnings and errors are captured on the
//! loading thread so that the install error can say why; they are logged afterwards too.

use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

struct Message(Option<String>);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = Some(format!("{value:?}"));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = Some(value.to_string());
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() > tracing::Level::WARN {
            return;
        }
        let mut message = Message(None);
        event.record(&mut message);
        if let Some(text) = message.0 {
            let text = text.trim().to_string();
            if !text.is_empty() {
                self.0.lock().unwrap_or_else(|p| p.into_inner()).push(text);
            }
        }
    }
}

/// Runs `load` with llama.cpp's warnings and errors on this thread captured; returns its
/// result and the captured lines (also logged as warnings).
pub fn capturing<T>(load: impl FnOnce() -> T) -> (T, Vec<String>) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    let result = tracing::subscriber::with_default(subscriber, load);
    let lines = std::mem::take(&mut *captured.0.lock().unwrap_or_else(|p| p.into_inner()));
    for line in &lines {
        tracing::warn!(target: "llama-cpp-2", "{line}");
    }
    (result, lines)
}
