"""A stand-in for `max serve` for fast supervisor tests: MAX's log lines and endpoints, no model.

Behaviour from the environment:
  FAKE_PORT             port to serve on (required)
  FAKE_NAME             served model name (default "fake")
  FAKE_STARTUP_S        seconds of "compiling" before binding the port (default 0.5)
  FAKE_EXIT_AFTER_S     exit with FAKE_EXIT_CODE this long after becoming ready
  FAKE_EXIT_CODE        (default 1)
  FAKE_FAIL_LOG         a line to print before exiting (e.g. a MAX error)
  FAKE_IGNORE_TERM      "1": ignore SIGTERM (the supervisor must KILL after the grace period)
  FAKE_MARKER           file whose content counts the starts (one line appended per start)
  FAKE_LEAVE_WORKER     "1": exit without ending the worker (it is orphaned, as MAX's are)
  FAKE_LIFETIME_S       exit (with the worker) after this long whatever happens: a test that dies
                        must not leave a runaway holding gigabytes
  FAKE_FLOOD_LINES      print this many numbered lines while compiling (every other one a "Still
                        compiling" progress line) and as many again once serving, each burst
                        ended by FLOOD_DONE <n>: a blocked pipe would stall it
  FAKE_SLOW_S           a POST with "slow" in its prompt starts a runaway: FAKE_ALLOC_MIB_PER_S
                        of anonymous memory every second (touched, so it is really used), at
                        most FAKE_ALLOC_CAP_MIB. The slow request is answered when SIGTERM comes
                        (a drain lets in-flight work finish), at the latest after FAKE_SLOW_S;
                        SIGTERM does not stop the runaway (it prints "ANSWERED slow" just before
                        the slow answer is sent)
  FAKE_ANSWERS          what chat completions answer (with MAX's logprobs tokens): "ok" (default:
                        "Paris."), "repeat" (one token over and over), "empty", "stopless" (runs
                        past the newline stop), "drift" ("Paris." for FAKE_DRIFT_AFTER requests,
                        then "Lyon.")
  FAKE_SAMPLING_CRASH   "1": a request with temperature > 0 kills the server with MAX's sampling-kernel
                        error (modular#6488), unless BALDR_GUARD=greedy (the entry point's patch
                        then decodes it greedily)
It forks one "worker" child in the same session, as MAX does, and prints its pid.
"""

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def log(msg):
    print(time.strftime("%H:%M:%S") + f".000 INFO: {msg}", flush=True)


def main():
    port = int(os.environ["FAKE_PORT"])
    name = os.environ.get("FAKE_NAME", "fake")
    if os.environ.get("FAKE_MARKER"):
        with open(os.environ["FAKE_MARKER"], "a") as fh:
            fh.write(f"{os.getpid()}\n")
    if os.environ.get("FAKE_IGNORE_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    log("Auto-detected pipeline task: text_generation (model architecture: LlamaForCausalLM)")
    log("Starting worker: MODEL_fake")
    worker = os.fork()
    if worker == 0:  # the "model worker": lives until killed
        if os.environ.get("FAKE_IGNORE_TERM") == "1":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(1)
    print(f"WORKER_PID {worker}", flush=True)
    log("Building, compiling, and initializing model...")
    time.sleep(float(os.environ.get("FAKE_STARTUP_S", "0.5")))
    log("Still compiling model (60.0s elapsed)")
    flood = int(os.environ.get("FAKE_FLOOD_LINES", "0"))

    def burst(n):
        filler = "x" * 150
        for i in range(flood):
            if i % 2:
                log(f"Still compiling model ({60 + i}.0s elapsed)")
            else:
                print(f"flood {n} line {i} {filler}")
        print(f"FLOOD_DONE {n}", flush=True)

    if flood:
        burst(1)
    log("Building, compiling, and initializing sampler...")
    log("Model worker ready")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _json(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self._json(200, {})
            elif self.path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": name}]})
            else:
                self._json(404, {})

        def do_POST(self):
            length = int(self.headers.get("content-length", 0))
            request = json.loads(self.rfile.read(length) or b"{}")
            if request.get("model") != name:
                return self._json(400, {"error": {"message": "Value error."}})
            print(f"REQUEST chat temperature={request.get('temperature')}", flush=True)
            slow = "slow" in json.dumps(request.get("messages", []))
            if slow and os.environ.get("FAKE_SLOW_S"):
                runaway.set()
                terminated.wait(float(os.environ["FAKE_SLOW_S"]))
                time.sleep(0.5)
            sampled = (request.get("temperature") or 0) > 0 and os.environ.get("BALDR_GUARD") != "greedy"
            if sampled and os.environ.get("FAKE_SAMPLING_CRASH") == "1":
                print("ERROR: CUDA call failed: CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES (too many resources requested "
                      "for launch) in topk_topp_sampling_from_prob_float32_int64_False", flush=True)
                os.kill(worker, signal.SIGKILL)
                os._exit(1)
            answered[0] += 1
            tokens = answer_tokens(answered[0])
            if slow:  # before the answer goes out: a client that has it knows the line is in the pipe
                print("ANSWERED slow", flush=True)
            self._json(200, {"choices": [{"finish_reason": "stop", "index": 0,
                                          "message": {"role": "assistant", "content": "".join(tokens)},
                                          "logprobs": {"content": [{"token": t, "bytes": list(t.encode()),
                                                                    "logprob": -0.1} for t in tokens]}}]})

    runaway = threading.Event()
    terminated = threading.Event()
    answered = [0]

    def answer_tokens(n: int) -> list[str]:
        mode = os.environ.get("FAKE_ANSWERS", "ok")
        if mode == "repeat":
            return [" Paris"] * 16
        if mode == "empty":
            return []
        if mode == "stopless":
            return ["Paris", ".", "\n", "Paris", "."]
        if mode == "drift" and n > int(os.environ.get("FAKE_DRIFT_AFTER", "2")):
            return ["Ly", "on", "."]
        return ["Paris", "."]

    def allocate():
        runaway.wait()
        step = int(os.environ.get("FAKE_ALLOC_MIB_PER_S", "512")) << 20
        cap = int(os.environ.get("FAKE_ALLOC_CAP_MIB", "4096")) << 20
        held = []
        while sum(len(b) for b in held) + step <= cap:
            block = bytearray(step)
            for i in range(0, step, 4096):  # touch every page: anonymous memory really in use
                block[i] = 1
            held.append(block)
            print(f"ALLOCATED {sum(len(b) for b in held) >> 20} MiB", flush=True)
            time.sleep(1.0)
        threading.Event().wait()  # hold it

    if os.environ.get("FAKE_SLOW_S"):
        # A runaway does not stop on SIGTERM: it says so and goes on (its requests still finish).
        def on_term(*_):
            print("SIGTERM received, still allocating", flush=True)
            terminated.set()

        signal.signal(signal.SIGTERM, on_term)
        threading.Thread(target=allocate, daemon=True).start()

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"        Server ready on http://127.0.0.1:{port} (Press CTRL+C to quit)", flush=True)
    if flood:
        burst(2)
    exit_after = os.environ.get("FAKE_EXIT_AFTER_S")
    lifetime = float(os.environ.get("FAKE_LIFETIME_S", "0"))
    start = time.monotonic()
    while True:
        time.sleep(0.05)
        if lifetime and time.monotonic() - start > lifetime:
            os.kill(worker, signal.SIGKILL)
            os._exit(99)
        if exit_after and time.monotonic() - start > float(exit_after):
            if os.environ.get("FAKE_FAIL_LOG"):
                print(os.environ["FAKE_FAIL_LOG"], flush=True)
            if os.environ.get("FAKE_LEAVE_WORKER") != "1":  # MAX's workers outlive a killed parent
                os.kill(worker, signal.SIGKILL)
            sys.exit(int(os.environ.get("FAKE_EXIT_CODE", "1")))



if __name__ == "__main__":
    main()
