//! A small progress bar on stderr: `[#####.....] 3/12 · 4 handshake: tproxy
//! cold` — redrawn in place on a terminal, one line per step otherwise.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

/// Progress over the selected scenarios.
pub struct Progress {
    state: Mutex<State>,
    tty: bool,
    started: Instant,
}

struct State {
    total: usize,
    done: usize,
    detail: String,
}

impl Progress {
    /// `total` scenarios.
    pub fn new(total: usize) -> Progress {
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(2) } == 1;
        Progress {
            state: Mutex::new(State {
                total,
                done: 0,
                detail: String::new(),
            }),
            tty,
            started: Instant::now(),
        }
    }

    /// What runs now.
    pub fn detail(&self, d: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.detail = d.to_owned();
            self.draw(&s);
        }
    }

    /// One scenario finished.
    pub fn advance(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.done = (s.done + 1).min(s.total);
            s.detail = "…".into();
            self.draw(&s);
        }
    }

    /// Ends the bar (newline on a terminal).
    pub fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }

    fn draw(&self, s: &State) {
        const W: usize = 24;
        let filled = (s.done * W).checked_div(s.total).unwrap_or(W);
        let bar: String = "#".repeat(filled) + &".".repeat(W - filled);
        let secs = self.started.elapsed().as_secs();
        let line = format!("[{bar}] {}/{} {:>3}s · {}", s.done, s.total, secs, s.detail);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let cut: String = line.chars().take(110).collect();
            let _ = write!(err, "\r\x1b[2K{cut}");
            let _ = err.flush();
        } else {
            let _ = writeln!(err, "{line}");
        }
    }
}
