//! The HTTP API over real loopback connections.

use futures::StreamExt;
use serde_json::{json, Value};

use super::*;

async fn serve(model: Arc<ChatModel>, limits: ChatHttpLimits) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = router(model, limits);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

async fn post(url: &str, body: String) -> (u16, reqwest::header::HeaderMap, String) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

async fn post_json(url: &str, body: Value) -> (u16, Value) {
    let (status, _, text) = post(url, body.to_string()).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

/// The `data:` payloads of a server-sent-event body.
fn events(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

fn assert_error(answer: &(u16, Value), status: u16, code: &str, says: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["code"], code, "{}", answer.1);
    let message = answer.1["message"].as_str().unwrap();
    assert!(message.contains(says), "{says:?} not in {message:?}");
}

fn chat_body(extra: Value) -> Value {
    let mut body = json!({
        "model": "anything-at-all",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": QUESTION},
        ],
        "max_tokens": 16,
        "temperature": 0,
        "user": "ignored",
        "frequency_penalty": 0,
    });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    body
}

#[tokio::test]
async fn chat_answers_like_openai() {
    let base = serve(smollm2(), ChatHttpLimits::default()).await;
    let url = format!("{base}/v1/chat/completions");
    let (status, body) = post_json(&url, chat_body(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["model"], smollm2().name());
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    let expected = smollm2().chat(&ask(QUESTION), &greedy(16)).await.unwrap();
    assert_eq!(choice["message"]["content"], expected.text.as_str());
    assert_eq!(choice["finish_reason"], expected.finish_reason.as_str());
    let usage = &body["usage"];
    assert_eq!(usage["prompt_tokens"], expected.usage.prompt_tokens);
    assert_eq!(usage["completion_tokens"], expected.usage.completion_tokens);
    assert_eq!(
        usage["total_tokens"],
        expected.usage.prompt_tokens + expected.usage.completion_tokens
    );

    // Content as an array of text parts is the same conversation.
    let parts = chat_body(json!({"messages": [
        {"role": "developer", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
        {"role": "user", "content": [
            {"type": "text", "text": "What is the capital "},
            {"type": "text", "text": "of France?"},
        ]},
    ]}));
    let (status, with_parts) = post_json(&url, parts).await;
    assert_eq!(status, 200, "{with_parts}");
    assert_eq!(with_parts["choices"], body["choices"]);
}

/// Concatenated text, finish reason and usage of a streamed answer, checking its framing.
fn read_stream(body: &str, chat: bool) -> (String, String, Value) {
    let events = events(body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{body}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    assert!(chunks.iter().all(|c| c["object"] == object), "{body}");
    let id = &chunks[0]["id"];
    assert!(chunks.iter().all(|c| &c["id"] == id));
    if chat {
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    }
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]), "{body}");
    let choices: Vec<&Value> = chunks[..chunks.len() - 1]
        .iter()
        .map(|c| {
            assert!(c["usage"].is_null());
            &c["choices"][0]
        })
        .collect();
    let (last, pieces) = choices.split_last().unwrap();
    assert!(pieces.iter().all(|c| c["finish_reason"].is_null()));
    let text: String = pieces
        .iter()
        .map(|c| {
            let piece = if chat {
                &c["delta"]["content"]
            } else {
                &c["text"]
            };
            piece.as_str().unwrap().to_string()
        })
        .collect();
    assert!(pieces.len() > 2, "the answer came in one piece: {body}");
    (
        text,
        last["finish_reason"].as_str().unwrap().to_string(),
        usage_chunk["usage"].clone(),
    )
}

#[tokio::test]
async fn streaming_and_non_streaming_give_the_same_text() {
    let base = serve(smollm2(), ChatHttpLimits::default()).await;
    let sampled = json!({"temperature": 0.8, "seed": 42, "max_tokens": 12});
    for (path, chat) in [("/v1/chat/completions", true), ("/v1/completions", false)] {
        let url = format!("{base}{path}");
        let request = if chat {
            chat_body(sampled.clone())
        } else {
            let mut body = sampled.clone();
            body["prompt"] = json!(["The sea is"]);
            body
        };
        let (status, whole) = post_json(&url, request.clone()).await;
        assert_eq!(status, 200, "{whole}");
        let mut streamed = request.clone();
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        let (status, headers, body) = post(&url, streamed.to_string()).await;
        assert_eq!(status, 200, "{body}");
        assert!(headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let (text, finish_reason, usage) = read_stream(&body, chat);
        let choice = &whole["choices"][0];
        let whole_text = if chat {
            &choice["message"]["content"]
        } else {
            &choice["text"]
        };
        assert_eq!(text, whole_text.as_str().unwrap(), "{path}");
        assert_eq!(finish_reason, choice["finish_reason"].as_str().unwrap());
        assert_eq!(usage, whole["usage"]);
        if !chat {
            assert_eq!(whole["object"], "text_completion");
        }
    }
}

#[tokio::test]
async fn models_lists_the_one_model() {
    let base = serve(smollm2(), ChatHttpLimits::default()).await;
    let body: Value = reqwest::get(format!("{base}/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["object"], "list");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["id"], smollm2().name());
    assert_eq!(data[0]["object"], "model");
}

#[tokio::test]
async fn bad_requests_are_refused_naming_the_field() {
    let base = serve(
        smollm2(),
        ChatHttpLimits {
            max_body_bytes: 64 * 1024,
            ..ChatHttpLimits::default()
        },
    )
    .await;
    let chat = format!("{base}/v1/chat/completions");
    let text = format!("{base}/v1/completions");
    let message = |role: &str| json!({"messages": [{"role": role, "content": "Hi"}]});
    let cases: Vec<(&str, Value, &str)> = vec![
        (&chat, json!({"messages": "Hi"}), "messages"),
        (&chat, json!({"messages": []}), "messages is empty"),
        (&chat, json!({"model": "m"}), "messages"),
        (&chat, message("robot"), "messages[0].role"),
        (&chat, message("tool"), "messages[0].role"),
        (
            &chat,
            json!({"messages": [{"role": "user", "content": 7}]}),
            "messages[0].content",
        ),
        (
            &chat,
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            "messages[0].content[0].type",
        ),
        (
            &chat,
            chat_body(json!({"temperature": "hot"})),
            "temperature",
        ),
        (&chat, chat_body(json!({"temperature": 2.5})), "temperature"),
        (&chat, chat_body(json!({"top_p": 0})), "top_p"),
        (&chat, chat_body(json!({"top_p": 1.01})), "top_p"),
        (&chat, chat_body(json!({"n": 2})), "n is 2"),
        (&chat, chat_body(json!({"max_tokens": 0})), "max_tokens"),
        (&chat, chat_body(json!({"max_tokens": -1})), "max_tokens"),
        (
            &chat,
            chat_body(json!({"stop": ["a", "b", "c", "d", "e"]})),
            "stop",
        ),
        (&chat, chat_body(json!({"stop": 3})), "stop"),
        (&chat, chat_body(json!({"stream": "yes"})), "stream"),
        (&chat, chat_body(json!({"seed": "x"})), "seed"),
        (&text, json!({"max_tokens": 4}), "prompt"),
        (&text, json!({"prompt": ["a", "b"]}), "prompt has 2"),
        (&text, json!({"prompt": "a", "echo": true}), "echo"),
        (&text, json!({"prompt": "a", "best_of": 3}), "best_of"),
        (&text, json!({"prompt": ""}), "prompt"),
        (
            &chat,
            chat_body(json!({"presence_penalty": -3})),
            "presence_penalty",
        ),
        (
            &text,
            json!({"prompt": "a", "frequency_penalty": 2.5}),
            "frequency_penalty",
        ),
        // Asked for and not honoured: refused by name, never silently ignored.
        (
            &chat,
            chat_body(json!({"tools": [{"type": "function", "function": {"name": "f"}}]})),
            "tools: this engine does not call tools",
        ),
        (&chat, chat_body(json!({"logprobs": true})), "logprobs"),
        (&chat, chat_body(json!({"top_logprobs": 2})), "top_logprobs"),
        (
            &chat,
            chat_body(json!({"logit_bias": {"42": 5}})),
            "logit_bias",
        ),
        (
            &chat,
            chat_body(json!({"response_format": {"type": "json_object"}})),
            "response_format",
        ),
        (&text, json!({"prompt": "a", "logprobs": 3}), "logprobs"),
    ];
    for (url, body, says) in cases {
        let answer = post_json(url, body.clone()).await;
        assert_eq!(answer.0, 400, "{body} -> {}", answer.1);
        assert_error(&answer, 400, "bad_request", says);
    }
    let malformed = post(&chat, "{\"messages\": [".into()).await;
    let malformed = (malformed.0, serde_json::from_str(&malformed.2).unwrap());
    assert_error(&malformed, 400, "bad_request", "not valid JSON");

    let huge = chat_body(json!({"messages": [{"role": "user", "content": "a".repeat(70_000)}]}));
    let answer = post_json(&chat, huge).await;
    assert_error(&answer, 413, "too_large", "65536 bytes");

    // ~6,000 tokens of text: under the body limit, over the context.
    let long =
        chat_body(json!({"messages": [{"role": "user", "content": "one two ".repeat(3000)}]}));
    let answer = post_json(&chat, long).await;
    assert_error(&answer, 400, "context_length_exceeded", "4096");
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let model = Arc::new(load(ChatOptions {
        max_waiting: 0,
        ..ChatOptions::default()
    }));
    let base = serve(
        model,
        ChatHttpLimits {
            retry_after_seconds: 3,
            ..ChatHttpLimits::default()
        },
    )
    .await;
    let (status, headers, body) = post(
        &format!("{base}/v1/chat/completions"),
        chat_body(json!({})).to_string(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "3");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "overloaded");
}

/// Polls `condition` until it holds or `within` has passed.
async fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_client_that_disconnects_stops_its_generation() {
    // One place only: the second request can run only once the first has let go of it.
    let model = Arc::new(load(ChatOptions {
        max_active: 1,
        ..ChatOptions::default()
    }));
    let base = serve(model.clone(), ChatHttpLimits::default()).await;
    let url = format!("{base}/v1/completions");
    // Counting goes on for far longer than the test would wait for 3,000 tokens.
    let long = json!({
        "prompt": "Count from 1 to 10000: 1, 2, 3, 4, 5,",
        "max_tokens": 3000, "temperature": 0, "stream": true,
    });
    let response = reqwest::Client::new()
        .post(&url)
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let first = String::from_utf8_lossy(&first).to_string();
    assert!(first.contains("text_completion"), "{first}");
    assert_eq!(model.stats().active, 1);
    // The client goes away mid-answer.
    drop(body);
    eventually(Duration::from_secs(30), "the cancelled generation", || {
        model.stats().cancelled == 1
    })
    .await;
    let stats = model.stats();
    assert_eq!((stats.active, stats.completed), (0, 0), "{stats:?}");

    let short = json!({"prompt": "The sea is", "max_tokens": 4, "temperature": 0});
    let (status, answer) = post_json(&url, short).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["usage"]["completion_tokens"], 4);
    // The worker counts a generation after sending its last event.
    eventually(Duration::from_secs(5), "the count of completed", || {
        model.stats().completed == 1
    })
    .await;
    assert_eq!(model.stats().cancelled, 1);
}
