"""Processes the harness starts: tracked by PID, stopped by PID (never by name)."""
import os
import signal
import subprocess
import time


class Proc:
    def __init__(self, name, popen, log):
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self.log = log

    def alive(self):
        return self.popen.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Signals the process (its own session/group, so `ip netns exec`
        children go too), waits, then SIGKILLs. Returns the exit status."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(5)
        return self.popen.returncode

    def output(self):
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()


class Procs:
    """Every process started, stopped in reverse order by `stop_all`."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.procs = []

    def start(self, name, argv, stdin=None, stdout_path=None, stderr_path=None, env=None):
        out = stdout_path or os.path.join(self.logdir, f"{name}.out")
        err = stderr_path or os.path.join(self.logdir, f"{name}.err")
        with open(out, "ab") as fo, open(err, "ab") as fe:
            popen = subprocess.Popen(
                argv,
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=fo,
                stderr=fe,
                start_new_session=True,
                env=env,
            )
        p = Proc(name, popen, out)
        p.err = err
        self.procs.append(p)
        return p

    def start_piped(self, name, argv):
        """A process controlled over stdin/stdout lines (API server, ...)."""
        err = os.path.join(self.logdir, f"{name}.err")
        with open(err, "ab") as fe:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=fe,
                start_new_session=True,
                text=True,
                bufsize=1,
            )
        p = Proc(name, popen, err)
        p.err = err
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in reversed(self.procs):
            p.stop(timeout=5)
        self.procs = []


def wait_for(pred, timeout, interval=0.1, what="condition"):
    """Polls `pred` until it returns a truthy value (returned) or `timeout`
    seconds pass (raises TimeoutError naming `what`)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
