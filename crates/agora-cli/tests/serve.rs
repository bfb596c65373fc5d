//! `agora serve` as a process: started with the fake backend on a free port, it prints the
//! address it bound, answers OpenAI-style requests with the token from the environment,
//! never prints that token, and stops gracefully on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// Kills the server if a test fails before stopping it.
struct Server {
    child: Child,
    address: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(token: Option<&str>) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agora"));
    command
        .args(["serve", "--backend", "fake:seeded", "--port", "0", "--token-env", "AGORA_TEST_SERVE_TOKEN"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("AGORA_TEST_SERVE_TOKEN");
    if let Some(token) = token {
        command.env("AGORA_TEST_SERVE_TOKEN", token);
    }
    let mut child = command.spawn().expect("the agora binary runs");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let address = line
        .trim()
        .strip_prefix("agora serve: listening on http://")
        .and_then(|rest| rest.split_once("/v1"))
        .map(|(address, _)| address.to_string())
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
    Server { child, address }
}

/// One HTTP/1.1 request over a fresh connection; the status and the JSON body.
fn request(server: &Server, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(&server.address).unwrap();
    let authorization = token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         {authorization}Connection: close\r\n\r\n{body}",
        server.address,
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    (status, serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}")))
}

const CHAT: &str = r#"{"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}"#;

#[test]
fn serves_chat_with_the_fake_backend() {
    let server = start(None);
    let (status, models) = request(&server, "GET", "/v1/models", None, "");
    assert_eq!((status, models["data"][0]["id"].as_str()), (200, Some("fake-seeded")));
    let (status, reply) = request(&server, "POST", "/v1/chat/completions", None, CHAT);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["object"], "chat.completion");
    assert!(!reply["choices"][0]["message"]["content"].as_str().unwrap().is_empty());
    assert!(reply["usage"]["completion_tokens"].as_u64().unwrap() <= 8);
}

#[cfg(unix)]
#[test]
fn requires_the_token_from_the_environment_and_stops_on_sigterm() {
    let mut server = start(Some("tok-123456"));
    let (status, error) = request(&server, "POST", "/v1/chat/completions", None, CHAT);
    assert_eq!((status, error["error"]["code"].as_str()), (401, Some("invalid_api_key")));
    let (status, _) = request(&server, "POST", "/v1/chat/completions", Some("wrong"), CHAT);
    assert_eq!(status, 401);
    let (status, _) = request(&server, "POST", "/v1/chat/completions", Some("tok-123456"), CHAT);
    assert_eq!(status, 200);

    let killed = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "graceful shutdown exits 0: {exit:?}");
    let mut stderr = String::new();
    server.child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("AGORA_TEST_SERVE_TOKEN") && stderr.contains("stopped"), "{stderr}");
    assert!(!stderr.contains("tok-123456"), "the token is never printed: {stderr}");
}
