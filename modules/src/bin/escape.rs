//! `escape`: tries to get out of the sandbox and reports every attempt.
//!
//! Prints one line per attempt, in this order:
//!
//! ```text
//! file /etc/passwd: denied: <error> | OPEN
//! file .: denied: <error> | OPEN            (read_dir of ".")
//! env HOME: absent | PRESENT=<value>
//! env AMQP_URL: absent | PRESENT=<value>
//! env GREETING: absent | PRESENT=<value>    (set it in the task to check env passes through)
//! env count: <number of visible variables>
//! socket 127.0.0.1:5672: denied: <error> | CONNECTED
//! args: <argv joined by spaces>
//! ```
//!
//! Exits 0 when every file and socket attempt was denied and neither HOME nor
//! AMQP_URL is visible, and 13 if anything escaped. GREETING is informational.

use std::env;
use std::fmt::Display;
use std::fs;
use std::net::TcpStream;
use std::process::ExitCode;

/// Prints one attempt and returns whether it got through.
fn report<T, E: Display>(what: &str, attempt: Result<T, E>, success: &str) -> bool {
    match attempt {
        Ok(_) => {
            println!("{what}: {success}");
            true
        }
        Err(err) => {
            println!("{what}: denied: {err}");
            false
        }
    }
}

/// Prints whether an environment variable is visible and returns whether it is.
fn report_env(name: &str) -> bool {
    match env::var_os(name) {
        Some(value) => {
            println!("env {name}: PRESENT={}", value.to_string_lossy());
            true
        }
        None => {
            println!("env {name}: absent");
            false
        }
    }
}

fn main() -> ExitCode {
    let mut escaped = false;
    escaped |= report("file /etc/passwd", fs::File::open("/etc/passwd"), "OPEN");
    escaped |= report("file .", fs::read_dir("."), "OPEN");
    escaped |= report_env("HOME");
    escaped |= report_env("AMQP_URL");
    report_env("GREETING");
    println!("env count: {}", env::vars_os().count());
    escaped |= report(
        "socket 127.0.0.1:5672",
        TcpStream::connect("127.0.0.1:5672"),
        "CONNECTED",
    );
    let args: Vec<String> = env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    println!("args: {}", args.join(" "));
    if escaped {
        ExitCode::from(13)
    } else {
        ExitCode::SUCCESS
    }
}
