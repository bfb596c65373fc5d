//! Chat templates render byte-identical to transformers' `apply_chat_template` (goldens from
//! scripts/goldens/make_text_goldens.py), and fail with clear errors.

use std::path::PathBuf;

use agora_model::{CHATML_TEMPLATE, ChatTemplate, Message};
use serde_json::Value;

fn goldens() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test_data/text/chat_templates.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn messages(value: &Value) -> Vec<Message> {
    serde_json::from_value(value.clone()).unwrap()
}

fn token<'a>(template: &'a Value, name: &str) -> Option<&'a str> {
    template[name].as_str()
}

/// Renders `source` with the golden's special tokens and variables; returns the mismatch, if any.
fn check(label: &str, template: &ChatTemplate, case: &Value) -> Option<String> {
    let kwargs = case["kwargs"].as_object().cloned().unwrap_or_default();
    let add_generation_prompt = case["add_generation_prompt"].as_bool().unwrap_or(false);
    let expected = case["expected"].as_str().unwrap();
    match template.render_with(&messages(&case["messages"]), add_generation_prompt, &kwargs) {
        Ok(rendered) if rendered == expected => None,
        Ok(rendered) => Some(format!("{label}:\n  expected {expected:?}\n  rendered {rendered:?}")),
        Err(error) => Some(format!("{label}: error {error}")),
    }
}

#[test]
fn templates_render_like_transformers() {
    let goldens = goldens();
    let mut failures = Vec::new();
    let renders = goldens["renders"].as_array().unwrap();
    for case in renders {
        let name = case["template"].as_str().unwrap();
        let spec = &goldens["templates"][name];
        let template = ChatTemplate::new(spec["source"].as_str().unwrap()).unwrap().with_special_tokens(
            token(spec, "bos_token"),
            token(spec, "eos_token"),
            token(spec, "unk_token"),
            token(spec, "pad_token"),
        );
        let label = format!(
            "{name}/{}/agp={}",
            case["conversation"].as_str().unwrap(),
            case["add_generation_prompt"]
        );
        failures.extend(check(&label, &template, case));
    }
    assert!(renders.len() >= 40, "too few golden renders: {}", renders.len());
    assert!(
        failures.is_empty(),
        "{} of {} renders differ:\n{}",
        failures.len(),
        renders.len(),
        failures.join("\n")
    );
}

#[test]
fn probes_render_like_jinja2() {
    let goldens = goldens();
    let probes = &goldens["probes"];
    let mut failures = Vec::new();
    for case in probes["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let template = match ChatTemplate::new(case["source"].as_str().unwrap()) {
            Ok(template) => template.with_special_tokens(
                token(probes, "bos_token"),
                token(probes, "eos_token"),
                token(probes, "unk_token"),
                None,
            ),
            Err(error) => {
                failures.push(format!("{name}: {error}"));
                continue;
            }
        };
        let mut case = case.clone();
        case["messages"] = probes["messages"].clone();
        failures.extend(check(name, &template, &case));
    }
    assert!(failures.is_empty(), "{} probes differ:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn builtin_chatml_is_the_golden_chatml() {
    let goldens = goldens();
    assert_eq!(goldens["templates"]["chatml"]["source"].as_str().unwrap(), CHATML_TEMPLATE);
    let fallback = ChatTemplate::chatml_fallback();
    assert!(fallback.is_fallback());
    let rendered = fallback.render(&[Message::user("Hi"), Message::assistant("Hello")], true).unwrap();
    assert_eq!(
        rendered,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn syntax_error_names_the_problem() {
    let error =
        ChatTemplate::new("{% for message in messages %}{{ message.content }}").unwrap_err().to_string();
    assert!(error.contains("chat template does not compile"), "{error}");
    assert!(error.contains("chat_template:1"), "{error}");
}

#[test]
fn raise_exception_becomes_an_error() {
    let source = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with a user turn') }}{% endif %}ok";
    let template = ChatTemplate::new(source).unwrap();
    assert_eq!(template.render(&[Message::user("hi")], false).unwrap(), "ok");
    let error = template.render(&[Message::assistant("hi")], false).unwrap_err().to_string();
    assert_eq!(
        error,
        "the chat template refused the conversation: Conversations must start with a user turn"
    );
}

#[test]
fn render_errors_are_reported() {
    let template = ChatTemplate::new("{{ messages[0].content.no_such_method() }}").unwrap();
    let error = template.render(&[Message::user("hi")], false).unwrap_err().to_string();
    assert!(error.starts_with("chat template failed to render"), "{error}");
}

#[test]
fn variables_and_strftime_now() {
    let template = ChatTemplate::new("{{ greeting }} {{ strftime_now('%Y') }}")
        .unwrap()
        .with_variable("greeting", &Value::from("hello"));
    let rendered = template.render(&[], false).unwrap();
    let (greeting, year) = rendered.split_once(' ').unwrap();
    assert_eq!(greeting, "hello");
    assert!(year.len() == 4 && year.parse::<u32>().unwrap() >= 2025, "{rendered}");
    // Extra variables of one call win over the template's own.
    let mut extra = serde_json::Map::new();
    extra.insert("greeting".to_owned(), Value::from("bye"));
    assert!(template.render_with(&[], false, &extra).unwrap().starts_with("bye "));
}
