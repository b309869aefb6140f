//! Tests with the real SmolLM2-135M-Instruct GGUF (Q4_1, 98 MB). Answers are kept short:
//! the point is the engine's behaviour, not the model's prose.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};

use super::*;

const MODEL_ENV: &str = "FLOWERS_TEST_SMOLLM2";

/// Where scripts/setup installed the model, as scripts/model-paths (the one place that knows
/// each package's layout) prints it, so a bare `cargo test` finds it too.
fn installed_model() -> Option<PathBuf> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/model-paths");
    let output = std::process::Command::new(script)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let path = String::from_utf8(output.stdout)
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("smollm2=").map(PathBuf::from))?;
    path.is_file().then_some(path)
}

fn model_path() -> PathBuf {
    match std::env::var_os(MODEL_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => installed_model().unwrap_or_else(|| {
            panic!(
                "{MODEL_ENV} is not set and scripts/model-paths finds no SmolLM2-135M-Instruct: \
                 these tests need the real model. Run scripts/setup, which installs it \
                 (scripts/test sets {MODEL_ENV})"
            )
        }),
    }
}

fn load(options: ChatOptions) -> ChatModel {
    let started = Instant::now();
    let model = ChatModel::load(&model_path(), options).expect("load SmolLM2");
    eprintln!("measured: SmolLM2 loaded in {:?}", started.elapsed());
    model
}

fn smollm2() -> Arc<ChatModel> {
    static MODEL: OnceLock<Arc<ChatModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| Arc::new(load(ChatOptions::default())))
        .clone()
}

fn greedy(max_tokens: usize) -> GenerationParams {
    GenerationParams {
        max_tokens: Some(max_tokens),
        temperature: 0.0,
        ..GenerationParams::default()
    }
}

/// With SmolLM2's own default system message the 135M model answers this question in
/// French verse; with a plain one it says "The capital of France is Paris."
fn ask(question: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(Role::System, "You are a helpful assistant."),
        ChatMessage::new(Role::User, question),
    ]
}

const QUESTION: &str = "What is the capital of France?";

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

mod tokenizer {
    use super::*;

    #[test]
    fn reads_the_gguf_metadata() {
        let model = smollm2();
        assert_eq!(model.context_length(), 4096, "min(8192, candle's 4096)");
        assert_eq!(model.name(), "Smollm2 135M 8k Lc100K Mix1 Ep2");
        assert_eq!(model.template_source(), TemplateSource::Gguf);
        let tokenizer = model.tokenizer();
        assert_eq!(tokenizer.pre(), "smollm");
        assert_eq!(tokenizer.vocab_size(), 49152);
        assert_eq!(tokenizer.bos_id(), Some(1));
        assert_eq!(tokenizer.eos_id(), 2);
        assert!(!tokenizer.adds_bos());
    }

    #[test]
    fn control_tokens_are_single_ids() {
        let model = smollm2();
        let tokenizer = model.tokenizer();
        assert_eq!(tokenizer.encode("<|im_start|>").unwrap(), vec![1]);
        assert_eq!(tokenizer.encode("<|im_end|>").unwrap(), vec![2]);
        let ids = tokenizer.encode("<|im_start|>user\nHi<|im_end|>").unwrap();
        assert_eq!(ids.first(), Some(&1));
        assert_eq!(ids.last(), Some(&2));
        assert!(tokenizer.ends_generation(2));
        assert!(
            tokenizer.ends_generation(0),
            "<|endoftext|> is a control token"
        );
        assert!(!tokenizer.ends_generation(tokenizer.token_id("Hello").unwrap()));
    }

    #[test]
    fn digits_are_split_one_per_token() {
        let model = smollm2();
        let tokenizer = model.tokenizer();
        let ids = tokenizer.encode("12345").unwrap();
        assert_eq!(ids.len(), 5, "{ids:?}");
        let digits: Vec<u32> = "12345"
            .chars()
            .map(|c| tokenizer.token_id(&c.to_string()).unwrap())
            .collect();
        assert_eq!(ids, digits);
    }

    #[test]
    fn hello_world_is_the_two_vocabulary_entries() {
        let model = smollm2();
        let tokenizer = model.tokenizer();
        let hello = tokenizer.token_id("Hello").unwrap();
        let world = tokenizer.token_id("Ġworld").unwrap();
        // With add_prefix_space=true (candle's fallback) the first would be "ĠHello".
        assert_eq!(tokenizer.encode("Hello world").unwrap(), vec![hello, world]);
        assert_ne!(tokenizer.token_id("ĠHello"), Some(hello));
    }

    #[test]
    fn text_round_trips_without_a_leading_space() {
        let model = smollm2();
        let tokenizer = model.tokenizer();
        for text in [
            "Hello world",
            "  two leading spaces",
            "naïve café, 3.14 ≈ π — 日本語\n\ttabs",
        ] {
            let ids = tokenizer.encode(text).unwrap();
            assert_eq!(tokenizer.decode(&ids), text);
            assert_eq!(tokenizer.inner().decode(&ids, false).unwrap(), text);
        }
        let ids = tokenizer.encode("Hello").unwrap();
        assert_eq!(ids.len(), 1);
        assert!(!tokenizer.decode(&ids).starts_with(' '));
    }
}

#[test]
fn the_template_adds_smollm_s_system_message_only_when_none_is_given() {
    let model = smollm2();
    let default_system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
    let prompt = model
        .render_chat(&[ChatMessage::new(Role::User, "Hi")])
        .unwrap();
    assert_eq!(
        prompt,
        format!(
            "<|im_start|>system\n{default_system}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        )
    );
    let prompt = model
        .render_chat(&[
            ChatMessage::new(Role::System, "Answer in French."),
            ChatMessage::new(Role::User, "Hi"),
        ])
        .unwrap();
    assert!(!prompt.contains(default_system), "{prompt}");
    assert!(prompt.starts_with("<|im_start|>system\nAnswer in French.<|im_end|>\n"));
    assert!(prompt.ends_with("<|im_start|>assistant\n"));
}

#[test]
fn greedy_answers_are_deterministic_and_end_by_eos_or_length() {
    let model = smollm2();
    let started = Instant::now();
    let first = block_on(model.chat(&ask(QUESTION), &greedy(16))).unwrap();
    let elapsed = started.elapsed();
    eprintln!(
        "measured: greedy {} prompt + {} completion tokens in {elapsed:?} ({:.1} completion tokens/s, prefill included): {:?}",
        first.usage.prompt_tokens,
        first.usage.completion_tokens,
        first.usage.completion_tokens as f64 / elapsed.as_secs_f64(),
        first.text
    );
    assert!(!first.text.trim().is_empty());
    assert!(first.usage.completion_tokens <= 16);
    match first.finish_reason {
        FinishReason::Length => assert_eq!(first.usage.completion_tokens, 16),
        FinishReason::Stop => assert!(first.usage.completion_tokens < 16),
    }
    assert!(first.text.contains("Paris"), "{}", first.text);
    let second = block_on(model.chat(&ask(QUESTION), &greedy(16))).unwrap();
    assert_eq!(first, second);
}

#[test]
fn the_same_seed_gives_the_same_sampled_text() {
    let model = smollm2();
    let sampled = |seed| GenerationParams {
        max_tokens: Some(12),
        temperature: 0.8,
        top_p: 0.95,
        seed,
        ..GenerationParams::default()
    };
    let messages = ask("Write a sentence about the sea.");
    let one = block_on(model.chat(&messages, &sampled(Some(7)))).unwrap();
    let two = block_on(model.chat(&messages, &sampled(Some(7)))).unwrap();
    assert_eq!(one, two);
    // No seed means DEFAULT_SEED, so also reproducible, and the same as giving it.
    let unseeded = block_on(model.chat(&messages, &sampled(None))).unwrap();
    let default_seed = block_on(model.chat(&messages, &sampled(Some(DEFAULT_SEED)))).unwrap();
    assert_eq!(unseeded, default_seed);
    let others: Vec<String> = [1, 2]
        .into_iter()
        .map(|seed| {
            block_on(model.chat(&messages, &sampled(Some(seed))))
                .unwrap()
                .text
        })
        .collect();
    assert!(
        others.iter().any(|text| *text != one.text),
        "sampling ignores the seed: {others:?}"
    );
}

#[test]
fn penalties_lower_each_generated_token_by_presence_and_frequency() {
    let params = GenerationParams {
        presence_penalty: 0.5,
        frequency_penalty: 0.25,
        ..GenerationParams::default()
    };
    let mut penalties = super::generation::Penalties::new(&params);
    let logits = Tensor::new(&[1.0f32, 2.0, 3.0, 4.0], &Device::Cpu).unwrap();
    // Nothing generated yet: nothing to lower.
    let same = penalties.apply(logits.clone()).unwrap();
    assert_eq!(same.to_vec1::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    for token in [1, 3, 1, 99] {
        penalties.record(token);
    }
    let lowered = penalties.apply(logits).unwrap().to_vec1::<f32>().unwrap();
    // Token 1 twice: 2 − 0.5 − 2 × 0.25; token 3 once: 4 − 0.5 − 0.25; 99 is past the end.
    assert_eq!(lowered, vec![1.0, 1.0, 3.0, 3.25]);
}

#[test]
fn a_frequency_penalty_makes_a_greedy_answer_repeat_itself_less() {
    let model = smollm2();
    // A prompt a small model continues by repeating it.
    let prompt = "yes, yes, yes, yes, yes, yes, yes, yes,";
    let count = |text: &str| text.to_lowercase().matches("yes").count();
    let free = block_on(model.complete(prompt, &greedy(24))).unwrap();
    let penalised = GenerationParams {
        frequency_penalty: 2.0,
        ..greedy(24)
    };
    let penalised = block_on(model.complete(prompt, &penalised)).unwrap();
    assert!(
        count(&penalised.text) < count(&free.text),
        "{:?} against {:?}",
        penalised.text,
        free.text
    );
}

#[test]
fn stop_strings_end_the_answer_and_are_not_sent() {
    let model = smollm2();
    let free = block_on(model.chat(&ask(QUESTION), &greedy(16))).unwrap();
    // A word from the middle of the greedy answer: the same greedy run must stop before it.
    let stop = free
        .text
        .split_whitespace()
        .nth(2)
        .expect("a greedy answer of at least three words")
        .to_string();
    let cut = &free.text[..free.text.find(&stop).unwrap()];
    let params = GenerationParams {
        stop: vec!["no such text".into(), stop.clone()],
        ..greedy(16)
    };
    let stopped = block_on(model.chat(&ask(QUESTION), &params)).unwrap();
    assert_eq!(stopped.text, cut, "stop {stop:?}");
    assert!(!stopped.text.contains(&stop));
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    assert!(stopped.usage.completion_tokens < free.usage.completion_tokens);
}

#[test]
fn max_tokens_is_respected() {
    let model = smollm2();
    let answer = block_on(model.chat(&ask("Tell me a long story."), &greedy(5))).unwrap();
    assert_eq!(answer.usage.completion_tokens, 5);
    assert_eq!(answer.finish_reason, FinishReason::Length);
    let prompt_tokens = model
        .tokenizer()
        .encode(&model.render_chat(&ask("Tell me a long story.")).unwrap())
        .unwrap()
        .len();
    assert_eq!(answer.usage.prompt_tokens, prompt_tokens);
}

#[test]
fn a_prompt_that_fills_the_context_is_refused_with_its_size() {
    let model = smollm2();
    let hello = model.tokenizer().token_id("Hello").unwrap();
    let Err(error) = model.submit_tokens(vec![hello; 4096], &greedy(1)) else {
        panic!("a 4096-token prompt was accepted");
    };
    assert!(
        matches!(
            error,
            Error::PromptTooLong {
                prompt_tokens: 4096,
                context_length: 4096
            }
        ),
        "{error}"
    );
}

#[test]
fn max_tokens_is_clamped_to_the_rest_of_the_context() {
    // A 48-token context keeps this cheap; the arithmetic is the same at 4096.
    let model = load(ChatOptions {
        max_context: Some(48),
        ..ChatOptions::default()
    });
    assert_eq!(model.context_length(), 48);
    let prompt = model.render_chat(&ask("Tell me a long story.")).unwrap();
    let prompt_tokens = model.tokenizer().encode(&prompt).unwrap().len();
    assert!(prompt_tokens < 45, "{prompt_tokens}");
    let answer = block_on(model.chat(&ask("Tell me a long story."), &greedy(1000))).unwrap();
    assert_eq!(answer.usage.prompt_tokens, prompt_tokens);
    assert!(answer.usage.completion_tokens <= 48 - prompt_tokens);
    if answer.usage.completion_tokens == 48 - prompt_tokens {
        assert_eq!(answer.finish_reason, FinishReason::Length);
    }
    let long = "Tell me a long story about the sea. ".repeat(4);
    let Err(error) = model.submit_chat(&ask(&long), &greedy(1)) else {
        panic!("a prompt over the context was accepted");
    };
    assert!(
        matches!(
            error,
            Error::PromptTooLong {
                context_length: 48,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn bad_parameters_are_refused_before_queueing() {
    let model = smollm2();
    let cases = [
        (
            GenerationParams {
                temperature: 2.5,
                ..greedy(1)
            },
            "temperature",
        ),
        (
            GenerationParams {
                temperature: f64::NAN,
                ..greedy(1)
            },
            "temperature",
        ),
        (
            GenerationParams {
                top_p: 0.0,
                ..greedy(1)
            },
            "top_p",
        ),
        (
            GenerationParams {
                top_p: 1.5,
                ..greedy(1)
            },
            "top_p",
        ),
        (greedy(0), "max_tokens"),
        (
            GenerationParams {
                presence_penalty: 2.5,
                ..greedy(1)
            },
            "presence_penalty",
        ),
        (
            GenerationParams {
                frequency_penalty: f64::NAN,
                ..greedy(1)
            },
            "frequency_penalty",
        ),
        (
            GenerationParams {
                stop: vec!["a".into(); 5],
                ..greedy(1)
            },
            "stop",
        ),
        (
            GenerationParams {
                stop: vec![String::new()],
                ..greedy(1)
            },
            "stop",
        ),
    ];
    for (params, field) in cases {
        match model.submit_chat(&ask("Hi"), &params) {
            Err(Error::InvalidParameter { field: named, .. }) => assert_eq!(named, field),
            Err(other) => panic!("{field}: {other}"),
            Ok(_) => panic!("{field}: accepted {params:?}"),
        }
    }
    assert!(matches!(
        model.submit_text("", &greedy(1)),
        Err(Error::InvalidParameter {
            field: "prompt",
            ..
        })
    ));
}

mod loading {
    use super::*;

    fn load_error(path: &Path) -> Error {
        match ChatModel::load(path, ChatOptions::default()) {
            Ok(_) => panic!("{} loaded", path.display()),
            Err(error) => error,
        }
    }

    #[test]
    fn a_directory_with_one_gguf_loads_it() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(model_path(), dir.path().join("model.gguf")).unwrap();
        std::fs::write(dir.path().join("README.md"), "not a model").unwrap();
        let model = ChatModel::load(
            dir.path(),
            ChatOptions {
                name: Some("smollm2".into()),
                ..ChatOptions::default()
            },
        )
        .unwrap();
        assert_eq!(model.name(), "smollm2");
    }

    #[test]
    fn a_directory_needs_exactly_one_gguf() {
        let dir = tempfile::tempdir().unwrap();
        let error = load_error(dir.path());
        assert!(matches!(error, Error::NoGguf { .. }), "{error}");
        assert!(error.to_string().contains("no .gguf"), "{error}");
        for name in ["a.gguf", "b.gguf"] {
            std::os::unix::fs::symlink(model_path(), dir.path().join(name)).unwrap();
        }
        let error = load_error(dir.path());
        assert!(matches!(error, Error::SeveralGguf { .. }), "{error}");
        assert!(error.to_string().contains("a.gguf, b.gguf"), "{error}");
    }

    #[test]
    fn a_text_file_is_not_a_gguf() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, "I am a text file, not a model.\n").unwrap();
        let error = load_error(&path);
        assert!(matches!(error, Error::InvalidFile { .. }), "{error}");
        assert!(error.to_string().contains("model.gguf"), "{error}");
        assert!(error.to_string().contains("GGUF"), "{error}");

        let error = load_error(&dir.path().join("missing.gguf"));
        assert!(error.to_string().contains("missing.gguf"), "{error}");
    }

    #[test]
    fn a_truncated_gguf_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(model_path()).unwrap();
        for keep in [bytes.len() / 2, 1000, 10] {
            let path = dir.path().join(format!("cut-{keep}.gguf"));
            std::fs::write(&path, &bytes[..keep]).unwrap();
            let error = load_error(&path);
            assert!(
                matches!(error, Error::InvalidFile { .. }),
                "{keep}: {error}"
            );
            assert!(
                error.to_string().contains(&format!("cut-{keep}.gguf")),
                "{error}"
            );
        }
    }

    #[test]
    fn another_architecture_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpt2.gguf");
        let mut file = std::fs::File::create(&path).unwrap();
        let architecture = gguf_file::Value::String("gpt2".into());
        gguf_file::write(&mut file, &[("general.architecture", &architecture)], &[]).unwrap();
        drop(file);
        let error = load_error(&path);
        assert!(
            matches!(&error, Error::UnsupportedArchitecture { found, .. } if found == "gpt2"),
            "{error}"
        );
        assert!(error.to_string().contains("\"gpt2\""), "{error}");
        assert!(error.to_string().contains("gpt2.gguf"), "{error}");
    }
}

mod http;

#[test]
fn weights_left_quantized_answer_too() {
    let model = load(ChatOptions {
        unpack_weights_up_to_bytes: 0,
        ..ChatOptions::default()
    });
    let answer = block_on(model.complete("The capital of France is", &greedy(3))).unwrap();
    assert_eq!(answer.usage.completion_tokens, 3);
    // Measured with the Q4_1 kernels as with f32: " Paris.\n".
    assert!(answer.text.starts_with(" Paris"), "{:?}", answer.text);
}

#[test]
fn dropping_the_stream_cancels_the_generation() {
    let model = load(ChatOptions::default());
    let stream = model
        .submit_text("Count from 1 to 10000: 1, 2, 3,", &greedy(3000))
        .unwrap();
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(30);
    while model.stats().cancelled == 0 {
        assert!(Instant::now() < deadline, "{:?}", model.stats());
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = model.stats();
    assert_eq!((stats.active, stats.completed, stats.cancelled), (0, 0, 1));
}
