"""A tiny SigOpt-compatible HTTP server for tests: only what search.py's client calls use.

It speaks the API of the real ``sigopt`` client (``Connection`` -> ``/v1/...`` JSON over HTTP
with basic auth, the token as user name), checks every request's shape strictly, and records
what it received, so a test drives the real client end to end and then compares.

Endpoints:
  POST /v1/experiments                          create (parameters, metrics, linear constraints)
  GET  /v1/experiments/<id>                     fetch, with progress.observation_count
  POST /v1/experiments/<id>/suggestions         next assignments (respecting the constraints)
  GET  /v1/experiments/<id>/suggestions?state=  list suggestions (pagination)
  GET  /v1/experiments/<id>/observations        list observations (pagination)
  POST /v1/experiments/<id>/observations        report values (or failed) for a suggestion or
                                                for explicit assignments
Shape violations are answered with HTTP 400 and appended to ``server.errors``.
"""
from __future__ import annotations

import base64
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

EXPERIMENT_KEYS = {"name", "parameters", "metrics", "linear_constraints", "observation_budget",
                   "parallel_bandwidth", "project", "metadata"}


class ShapeError(Exception):
    pass


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ShapeError(message)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class FakeSigOpt:
    """State of the fake service; ``url`` is what SIGOPT_API_URL should be set to."""

    def __init__(self, token: str = "test-token", seed: int = 0, scripted=()):
        self.token = token
        self.rng = random.Random(seed)
        self.scripted = list(scripted)  # assignments dicts served before random ones
        self.experiments: dict[str, dict] = {}
        self.suggestions: dict[str, dict] = {}
        self.observations: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeSigOpt":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- validation ---------------------------------------------------------------------------

    def check_experiment(self, body: dict) -> None:
        _require(isinstance(body, dict), "body must be a JSON object")
        _require(set(body) <= EXPERIMENT_KEYS, f"unknown experiment keys {sorted(set(body) - EXPERIMENT_KEYS)}")
        _require(isinstance(body.get("name"), str) and body["name"], "name must be a non-empty string")
        params = body.get("parameters")
        _require(isinstance(params, list) and params, "parameters must be a non-empty list")
        names = set()
        for p in params:
            _require(set(p) == {"name", "type", "bounds"}, f"parameter keys {sorted(p)}")
            _require(p["type"] == "int", f"parameter {p['name']} must be type int")
            b = p["bounds"]
            _require(set(b) == {"min", "max"} and all(isinstance(b[k], int) for k in b)
                     and b["min"] <= b["max"], f"bad bounds {b}")
            _require(p["name"] not in names, f"duplicate parameter {p['name']}")
            names.add(p["name"])
        metrics = body.get("metrics")
        _require(isinstance(metrics, list) and len(metrics) == 2, "two metrics expected (multi-metric)")
        for m in metrics:
            _require(set(m) == {"name", "objective", "strategy"}, f"metric keys {sorted(m)}")
            _require(m["objective"] in ("maximize", "minimize"), f"bad objective {m['objective']}")
            _require(m["strategy"] == "optimize", f"bad strategy {m['strategy']}")
        for c in body.get("linear_constraints", []):
            _require(set(c) == {"type", "threshold", "terms"}, f"constraint keys {sorted(c)}")
            _require(c["type"] in ("less_than", "greater_than"), f"bad constraint type {c['type']}")
            _require(_is_number(c["threshold"]), "threshold must be a number")
            _require(isinstance(c["terms"], list) and len(c["terms"]) >= 2, "a constraint needs >= 2 terms")
            for t in c["terms"]:
                _require(set(t) == {"name", "weight"} and t["name"] in names and _is_number(t["weight"]),
                         f"bad constraint term {t}")
        _require(isinstance(body.get("observation_budget"), int) and body["observation_budget"] >= 1,
                 "observation_budget must be a positive int")
        _require(isinstance(body.get("parallel_bandwidth", 1), int) and body.get("parallel_bandwidth", 1) >= 1,
                 "parallel_bandwidth must be a positive int")

    @staticmethod
    def satisfies(experiment: dict, assignments: dict) -> bool:
        for p in experiment["parameters"]:
            value = assignments.get(p["name"])
            if not isinstance(value, int) or not p["bounds"]["min"] <= value <= p["bounds"]["max"]:
                return False
        for c in experiment.get("linear_constraints", []):
            total = sum(t["weight"] * assignments[t["name"]] for t in c["terms"])
            if c["type"] == "less_than" and total > c["threshold"]:
                return False
            if c["type"] == "greater_than" and total < c["threshold"]:
                return False
        return True

    def check_observation(self, experiment: dict, body: dict) -> dict:
        allowed = {"suggestion", "assignments", "values", "failed", "metadata"}
        _require(set(body) <= allowed, f"unknown observation keys {sorted(set(body) - allowed)}")
        _require(("suggestion" in body) != ("assignments" in body), "give exactly one of suggestion / assignments")
        if "suggestion" in body:
            suggestion = self.suggestions.get(str(body["suggestion"]))
            _require(suggestion is not None and suggestion["experiment"] == experiment["id"],
                     f"unknown suggestion {body['suggestion']}")
            _require(suggestion["state"] == "open", f"suggestion {body['suggestion']} already observed")
            assignments = suggestion["assignments"]
        else:
            assignments = body["assignments"]
            _require(isinstance(assignments, dict) and self.satisfies(experiment, assignments),
                     f"assignments {assignments} violate the bounds or constraints")
        metadata = body.get("metadata", {})
        _require(isinstance(metadata, dict) and all(isinstance(k, str) and (isinstance(v, str) or _is_number(v))
                                                    for k, v in metadata.items()),
                 f"metadata must map names to strings or numbers, got {metadata}")
        if body.get("failed"):
            _require(body["failed"] is True and "values" not in body, "a failed observation has no values")
        else:
            values = body.get("values")
            _require(isinstance(values, list), "values must be a list")
            names = sorted(v.get("name") for v in values)
            _require(names == sorted(m["name"] for m in experiment["metrics"]),
                     f"values {names} do not match the metrics")
            _require(all(set(v) == {"name", "value"} and _is_number(v["value"]) for v in values),
                     f"bad values {values}")
        return dict(assignments)

    # -- actions ------------------------------------------------------------------------------

    def experiment_json(self, experiment: dict) -> dict:
        count = sum(1 for o in self.observations if o["experiment"] == experiment["id"])
        return dict(experiment, object="experiment", state="active", type="offline",
                    progress={"object": "progress", "observation_count": count})

    def new_assignments(self, experiment: dict) -> dict:
        if self.scripted:
            return self.scripted.pop(0)
        params = experiment["parameters"]
        draws = sorted((self.rng.randint(p["bounds"]["min"], p["bounds"]["max"]) for p in params), reverse=True)
        return {p["name"]: v for p, v in zip(params, draws)}

    def handle(self, method: str, path: str, query: dict, body):
        parts = [p for p in path.split("/") if p]
        _require(parts[:1] == ["v1"], f"unknown path {path}")
        parts = parts[1:]
        if parts == ["experiments"] and method == "POST":
            self.check_experiment(body)
            experiment_id = str(1000 + len(self.experiments))
            self.experiments[experiment_id] = dict(body, id=experiment_id)
            return 200, self.experiment_json(self.experiments[experiment_id])
        if len(parts) < 2 or parts[0] != "experiments" or parts[1] not in self.experiments:
            return 404, {"message": f"not found: {path}"}
        experiment = self.experiments[parts[1]]
        if len(parts) == 2 and method == "GET":
            return 200, self.experiment_json(experiment)
        if parts[2:] == ["suggestions"] and method == "POST":
            _require(not body, f"suggestion create takes no body here, got {body}")
            assignments = self.new_assignments(experiment)
            _require(self.satisfies(experiment, assignments), f"scripted {assignments} violate constraints")
            suggestion_id = str(5000 + len(self.suggestions))
            self.suggestions[suggestion_id] = {"object": "suggestion", "id": suggestion_id,
                                               "experiment": experiment["id"],
                                               "assignments": assignments, "state": "open"}
            return 200, self.suggestions[suggestion_id]
        if parts[2:] == ["suggestions"] and method == "GET":
            state = query.get("state", [None])[0]
            data = [s for s in self.suggestions.values()
                    if s["experiment"] == experiment["id"] and (state is None or s["state"] == state)]
            return 200, {"object": "pagination", "count": len(data), "data": data,
                         "paging": {"before": None, "after": None}}
        if parts[2:] == ["observations"] and method == "GET":
            data = [o for o in self.observations if o["experiment"] == experiment["id"]]
            return 200, {"object": "pagination", "count": len(data), "data": data,
                         "paging": {"before": None, "after": None}}
        if parts[2:] == ["observations"] and method == "POST":
            assignments = self.check_observation(experiment, body)
            if "suggestion" in body:
                self.suggestions[str(body["suggestion"])]["state"] = "closed"
            observation = {"object": "observation", "id": str(9000 + len(self.observations)),
                           "experiment": experiment["id"], "assignments": assignments,
                           "suggestion": body.get("suggestion"), "failed": bool(body.get("failed")),
                           "values": body.get("values"), "metadata": body.get("metadata")}
            self.observations.append(observation)
            return 200, observation
        return 404, {"message": f"not found: {method} {path}"}

    def _handler_class(self):
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _respond(self, status: int, payload) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _dispatch(self, method: str) -> None:
                split = urlsplit(self.path)
                with service.lock:
                    service.requests.append((method, split.path))
                    expected = "Basic " + base64.b64encode(f"{service.token}:".encode()).decode()
                    if self.headers.get("Authorization") != expected:
                        return self._respond(401, {"message": "Invalid API token"})
                    length = int(self.headers.get("Content-Length") or 0)
                    raw = self.rfile.read(length) if length else b""
                    try:
                        body = json.loads(raw) if raw else {}
                        status, payload = service.handle(method, split.path, parse_qs(split.query), body)
                    except (ShapeError, ValueError, KeyError, TypeError) as err:
                        service.errors.append(f"{method} {split.path}: {err}")
                        status, payload = 400, {"message": str(err)}
                self._respond(status, payload)

            def do_GET(self):
                self._dispatch("GET")

            def do_POST(self):
                self._dispatch("POST")

            def do_PUT(self):
                self._dispatch("PUT")

            def do_DELETE(self):
                self._dispatch("DELETE")

        return Handler
