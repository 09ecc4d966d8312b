//! Quantizing the real SmolLM2 135M (Q4_1) model: Q4_0 and Q8_0 come out with the right
//! `general.file_type`, sizes in the expected order, and llama.cpp loads them and generates.
//!
//! Needs tests/tools/fetch-models.sh (fails, never skips, without it).

use std::num::NonZeroU32;
use std::path::Path;

use edgefleet_gguf_quantize::{Quantization, QuantizeError, backend, quantize, read_header};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;

const SOURCE: &str = "smollm2-135m-instruct-q4_1.gguf";

/// Greedy generation of `n` tokens after `prompt`; returns the generated text.
fn generate(path: &Path, prompt: &str, n: usize) -> String {
    let backend = backend().expect("backend");
    let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
        .expect("llama.cpp loads the variant");
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(256))
        .with_n_threads(2)
        .with_n_threads_batch(2);
    let mut ctx = model.new_context(backend, params).expect("context");
    let tokens = model.vocab().tokenize(prompt.as_bytes(), true, true);
    let mut batch = LlamaBatch::new(256, 1);
    for (i, t) in tokens.iter().enumerate() {
        batch
            .add(*t, i as i32, &[0], i + 1 == tokens.len())
            .expect("batch");
    }
    ctx.decode(&mut batch).expect("prompt");
    let mut out = Vec::new();
    let start = tokens.len() as i32;
    for pos in start..start + n as i32 {
        let logits = ctx.get_logits_ith(batch.n_tokens() - 1);
        let best = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as i32)
            .expect("logits");
        let token = llama_cpp_2::token::LlamaToken::new(best);
        if model.vocab().is_eog(token) {
            break;
        }
        out.extend(model.vocab().token_to_piece(token, false, None));
        batch.clear();
        batch.add(token, pos, &[0], true).expect("batch");
        ctx.decode(&mut batch).expect("decode");
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn quantizes_the_real_model_to_q4_0_and_q8_0() {
    let source = edgefleet_e2e::model(SOURCE);
    let source_size = std::fs::metadata(&source).expect("source").len();
    assert_eq!(read_header(&source).expect("header").quantization(), "Q4_1");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sizes = Vec::new();
    for q in [Quantization::Q4_0, Quantization::Q8_0] {
        let out = dir.path().join(format!("{}.gguf", q.name()));
        quantize(&source, &out, q, 2).expect("quantize");
        let header = read_header(&out).expect("output header");
        assert_eq!(header.file_type, Some(q.ftype()), "{q}");
        assert_eq!(header.quantization(), q.name());
        assert_eq!(header.layers, 30);
        let text = generate(&out, "The capital of France is", 6);
        assert!(!text.trim().is_empty(), "{q} generated nothing");
        eprintln!("{q}: {:?}", text);
        sizes.push(std::fs::metadata(&out).expect("output").len());
    }
    // Q4_0 (4.5 bits/weight) < Q4_1 (5) < Q8_0 (8.5).
    let (q4_0, q8_0) = (sizes[0], sizes[1]);
    assert!(q4_0 < source_size, "Q4_0 {q4_0} vs Q4_1 {source_size}");
    assert!(source_size < q8_0, "Q4_1 {source_size} vs Q8_0 {q8_0}");
    // Only the outputs: no temporary files left.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn a_non_gguf_input_is_refused_and_leaves_no_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("model.gguf");
    std::fs::write(&input, b"this is not a GGUF file at all, just some bytes").expect("write");
    let out = dir.path().join("out.gguf");
    let err = quantize(&input, &out, Quantization::Q4_0, 1).expect_err("not gguf");
    assert!(matches!(err, QuantizeError::NotGguf(_)), "{err:?}");
    assert!(err.to_string().contains("not a GGUF file"), "{err}");
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);

    let missing = dir.path().join("missing.gguf");
    let err = quantize(&missing, &out, Quantization::Q8_0, 1).expect_err("missing");
    assert!(matches!(err, QuantizeError::Io { .. }), "{err:?}");
    assert!(!out.exists());
}
