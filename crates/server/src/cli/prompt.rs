//! Terminal prompts for the interactive admin commands. Passwords are read without echo when
//! standard input is a terminal; otherwise lines are read from standard input, so scripts (and
//! tests) can drive the prompts through a pipe.

use std::io::{self, BufRead, IsTerminal, Write};

/// Prints `prompt` and reads one line without its newline; `None` at end of input.
pub fn line(prompt: &str) -> io::Result<Option<String>> {
    print!("{prompt}");
    io::stdout().flush()?;
    let mut buf = String::new();
    if io::stdin().lock().read_line(&mut buf)? == 0 {
        println!();
        return Ok(None);
    }
    Ok(Some(buf.trim_end_matches(['\n', '\r']).to_owned()))
}

/// Reads a password with echo off when possible.
pub fn password(prompt: &str) -> io::Result<Option<String>> {
    if io::stdin().is_terminal() {
        rpassword::prompt_password(prompt).map(Some)
    } else {
        line(prompt)
    }
}

/// A yes/no question whose default is no; `yes` and `y` (any case) mean yes.
pub fn confirm(prompt: &str) -> io::Result<bool> {
    Ok(line(prompt)?
        .map(|a| matches!(a.trim().to_lowercase().as_str(), "y" | "yes"))
        .unwrap_or(false))
}
