#!/usr/bin/env python3
"""Generates deploy/grafana/dashboards/sq.json (the sq Grafana dashboard).

Edit this file, not the JSON, then run:  python3 deploy/grafana/dashboard.py
scripts/docker_check.sh fails when the committed JSON differs from what this writes.

Rows follow docs/service.md: traffic and outcomes; latency per stage and queue wait;
saturation (queue depth, slots, memory, disk); transfers; quality (SQNR split vs plain);
plus version annotations from sq_build_info. Standard library only.
"""
import json
import os
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'  # label selector shared by every query
RI = "$__rate_interval"

# Metric names exported by the server (server/metrics.*). Keep in sync with the code.
M = {
    "submitted": "sq_jobs_submitted_total",
    "finished": "sq_jobs_finished_total",  # label: outcome = succeeded | failed | cancelled
    "queue_depth": "sq_queue_depth",
    "running": "sq_jobs_running",
    "slots": "sq_worker_slots",
    "queue_wait": "sq_queue_wait_seconds",  # histogram
    "job_duration": "sq_job_duration_seconds",  # histogram, label: outcome
    "stage_duration": "sq_stage_duration_seconds",  # histogram, label: stage
    "upload": "sq_upload_bytes_total",
    "download": "sq_download_bytes_total",
    "uploads": "sq_uploads_total",  # label: outcome = stored | deduplicated | rejected
    "ratio": "sq_compression_ratio",  # histogram
    "sqnr": "sq_layer_sqnr_decibels",  # histogram, label: method = split | plain
    "build_info": "sq_build_info",  # label: version
    "rpcs": "grpc_server_handled_total",  # labels: grpc_service, grpc_method, grpc_code
    "rpc_seconds": "grpc_server_handling_seconds",  # histogram, labels: grpc_service, grpc_method
    "volume": "sq_artifact_volume_bytes",  # label: kind = used | free | total
    "removed": "sq_removed_bytes_total",  # labels: kind = job | model, reason = retention | request
}
# Not exported by sq-server itself (yet): resident memory under the standard
# process-collector name, and container / volume metrics from the kubelet (cAdvisor).
RSS = "process_resident_memory_bytes"
CONTAINER_MEM = 'container_memory_working_set_bytes{container="sq-server"}'
PVC = 'persistentvolumeclaim="sq-artifacts"'


class Layout:
    """Places panels left to right on Grafana's 24-column grid, one row header at a time."""

    def __init__(self):
        self.panels = []
        self.y = 0
        self.x = 0
        self.row_h = 0
        self.next_id = 1

    def _id(self):
        i = self.next_id
        self.next_id += 1
        return i

    def row(self, title):
        self._newline()
        self.panels.append({
            "type": "row", "id": self._id(), "title": title, "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": [],
        })
        self.y += 1

    def _newline(self):
        if self.x:
            self.y += self.row_h
            self.x = 0
            self.row_h = 0

    def add(self, panel, w, h):
        if self.x + w > 24:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def target(expr, legend="", ref="A", **extra):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref,
         "range": True}
    t.update(extra)
    return t


def targets(*pairs):
    return [target(e, l, chr(ord("A") + i)) for i, (e, l) in enumerate(pairs)]


def timeseries(title, tgts, unit="short", desc="", stack=False, min0=True, overrides=None,
               decimals=None):
    defaults = {
        "unit": unit,
        "custom": {
            "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if not stack else 40,
            "showPoints": "never", "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        },
    }
    if min0:
        defaults["min"] = 0
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "timeseries", "title": title, "description": desc, "datasource": DS,
        "targets": tgts,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(title, tgts, unit="short", desc="", thresholds=None, decimals=None, text_mode="auto",
         instant=True):
    for t in tgts:
        if instant:
            t["instant"] = True
            t["range"] = False
    defaults = {
        "unit": unit,
        "thresholds": {"mode": "absolute", "steps": thresholds or [{"color": "green", "value": None}]},
        "color": {"mode": "thresholds"},
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat", "title": title, "description": desc, "datasource": DS, "targets": tgts,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value", "graphMode": "none", "justifyMode": "auto",
            "textMode": text_mode, "orientation": "auto",
        },
    }


def heatmap(title, expr, desc=""):
    return {
        "type": "heatmap", "title": title, "description": desc, "datasource": DS,
        "targets": [target(expr, "{{le}}", format="heatmap")],
        "fieldConfig": {"defaults": {"custom": {}}, "overrides": []},
        "options": {
            "calculate": False,
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64, "exponent": 0.5,
                      "fill": "dark-orange", "reverse": False},
            "yAxis": {"axisPlacement": "left", "unit": "dB"},
            "rowsFrame": {"layout": "auto"},
            "tooltip": {"show": True, "yHistogram": False},
            "legend": {"show": True},
        },
    }


def quantiles(metric, by="", qs=(0.5, 0.9, 0.99), legend_prefix=""):
    """histogram_quantile series for a Prometheus histogram, optionally split by a label."""
    group = "le" + (", " + by if by else "")
    out = []
    for q in qs:
        expr = (f"histogram_quantile({q}, sum by ({group}) "
                f"(rate({metric}_bucket{{{SEL}}}[{RI}])))")
        label = f"p{int(q * 100)}"
        legend = f"{legend_prefix}{{{{{by}}}}} {label}" if by else f"{legend_prefix}{label}"
        out.append((expr, legend))
    return out


def build():
    L = Layout()
    fin = M["finished"]

    # --- traffic and outcomes ------------------------------------------------------------
    L.row("Traffic and outcomes")
    L.add(timeseries(
        "Jobs submitted and finished", targets(
            (f'sum(rate({M["submitted"]}{{{SEL}}}[{RI}]))', "submitted"),
            (f'sum by (outcome) (rate({fin}{{{SEL}}}[{RI}]))', "finished: {{outcome}}"),
        ), unit="reqps", desc="SubmitJob calls that created a job, and jobs reaching a terminal state, per second."), 12, 8)
    L.add(timeseries(
        "Outcomes (share of finished jobs)", targets(
            (f'sum by (outcome) (rate({fin}{{{SEL}}}[{RI}])) / ignoring(outcome) group_left '
             f'sum(rate({fin}{{{SEL}}}[{RI}]))', "{{outcome}}"),
        ), unit="percentunit", stack=True,
        desc="Fraction of finished jobs per outcome (succeeded, failed, cancelled, ...)."), 6, 8)
    L.add(stat(
        "Failure ratio (range)", [target(
            f'sum(increase({fin}{{{SEL}, outcome="failed"}}[$__range])) / '
            f'sum(increase({fin}{{{SEL}}}[$__range]))', "failed")],
        unit="percentunit", decimals=1,
        thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 0.05},
                    {"color": "red", "value": 0.2}],
        desc="Failed / finished jobs over the dashboard's time range."), 3, 4)
    L.add(stat(
        "Jobs finished (range)", [target(
            f'sum(increase({fin}{{{SEL}}}[$__range]))', "jobs")],
        decimals=0, desc="Jobs that reached a terminal state in the time range."), 3, 4)
    L.add(stat(
        "Versions running", [target(
            f'count by (version) ({M["build_info"]}{{{SEL}}})', "{{version}}")],
        text_mode="name", desc="sq_build_info: one value per version currently exporting metrics; "
        "version changes also appear as annotations on every graph."), 6, 4)

    # --- latency --------------------------------------------------------------------------
    L.row("Latency: job, per stage, queue wait")
    L.add(timeseries("Job duration", targets(
        *quantiles(M["job_duration"]),
        *quantiles(M["job_duration"], by="outcome", qs=(0.9,))), unit="s",
        desc="Run time of a job from start to terminal state (excludes queue wait)."), 8, 8)
    L.add(timeseries("Queue wait", targets(*quantiles(M["queue_wait"])), unit="s",
                     desc="Time from SubmitJob to a worker picking the job up."), 8, 8)
    L.add(timeseries("Stage duration p90", targets(*quantiles(M["stage_duration"], by="stage", qs=(0.9,))),
                     unit="s", desc="p90 of sq_stage_duration_seconds per pipeline stage."), 8, 8)
    L.add(timeseries(
        "Where the time goes (busy seconds per second, by stage)", targets(
            (f'sum by (stage) (rate({M["stage_duration"]}_sum{{{SEL}}}[{RI}]))', "{{stage}}"),
        ), unit="s", stack=True,
        desc="Sum of stage durations per second: which stage dominates worker time."), 12, 8)
    L.add(timeseries(
        "Mean stage duration", targets(
            (f'sum by (stage) (rate({M["stage_duration"]}_sum{{{SEL}}}[{RI}])) / '
             f'sum by (stage) (rate({M["stage_duration"]}_count{{{SEL}}}[{RI}]))', "{{stage}}"),
        ), unit="s"), 12, 8)

    # --- saturation -----------------------------------------------------------------------
    L.row("Saturation: queue, worker slots, memory, disk")
    L.add(timeseries(
        "Queue depth", targets(
            (f'sum by (instance) ({M["queue_depth"]}{{{SEL}}})', "{{instance}} queued"),
        ), decimals=0, desc="Jobs waiting for a worker. The queue is bounded (--queue_capacity): "
        "SubmitJob returns RESOURCE_EXHAUSTED when it is full."), 8, 8)
    L.add(timeseries(
        "Running jobs vs worker slots", targets(
            (f'sum by (instance) ({M["running"]}{{{SEL}}})', "{{instance}} running"),
            (f'sum by (instance) ({M["slots"]}{{{SEL}}})', "{{instance}} slots"),
        ), decimals=0), 8, 8)
    L.add(stat(
        "Worker utilisation", [target(
            f'sum({M["running"]}{{{SEL}}}) / sum({M["slots"]}{{{SEL}}})', "busy")],
        unit="percentunit", decimals=0,
        thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 0.8},
                    {"color": "red", "value": 1}]), 4, 8)
    L.add(stat(
        "Queued now", [target(f'sum({M["queue_depth"]}{{{SEL}}})', "queued")],
        decimals=0,
        thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 1},
                    {"color": "red", "value": 8}]), 4, 8)
    L.add(timeseries(
        "Memory", targets(
            (f'{RSS}{{{SEL}}}', "{{instance}} resident"),
            (f'sum by (pod) ({CONTAINER_MEM})', "{{pod}} working set"),
        ), unit="bytes", desc="Resident memory of sq-server (" + RSS + ", where the server "
        "exports it) and the container's working set (cAdvisor, in Kubernetes). Quantizing a "
        "large model is memory-bound: compare with the container limit."), 12, 8)
    L.add(timeseries(
        "Artifact volume", targets(
            (f'sum by (persistentvolumeclaim) (kubelet_volume_stats_used_bytes{{{PVC}}})', "used"),
            (f'sum by (persistentvolumeclaim) (kubelet_volume_stats_capacity_bytes{{{PVC}}})', "capacity"),
        ), unit="bytes", desc="Used and total bytes of the artifact volume (--artifact_dir), from "
        "the kubelet's volume stats (Kubernetes). UploadModel and jobs fail with "
        "RESOURCE_EXHAUSTED when it is full."), 12, 8)

    L.add(timeseries(
        "Artifact directory (as the server sees it) and what retention frees", targets(
            (f'sum by (instance) ({M["volume"]}{{{SEL}, kind="used"}})', "{{instance}} used"),
            (f'sum by (instance) ({M["volume"]}{{{SEL}, kind="free"}})', "{{instance}} free"),
            (f'sum by (reason, kind) (increase({M["removed"]}{{{SEL}}}[$__interval]))', "removed: {{kind}} ({{reason}})"),
        ), unit="bytes", desc="statvfs of --artifact_dir read at scrape time (any deployment), "
        "and bytes removed by the retention sweeper (--retention_age / --retention_bytes) or by "
        "DeleteJob / DeleteModel."), 12, 8)

    # --- RPCs -----------------------------------------------------------------------------
    L.row("RPCs")
    L.add(timeseries(
        "RPCs by method", targets(
            (f'sum by (grpc_method) (rate({M["rpcs"]}{{{SEL}}}[{RI}]))', "{{grpc_method}}"),
        ), unit="reqps", stack=True, desc="Completed RPCs per second (grpc_server_handled_total)."), 8, 8)
    L.add(timeseries(
        "RPC errors by method and code", targets(
            (f'sum by (grpc_method, grpc_code) (rate({M["rpcs"]}{{{SEL}, grpc_code!="OK"}}[{RI}]))',
             "{{grpc_method}} {{grpc_code}}"),
        ), unit="reqps", desc="Non-OK statuses: RESOURCE_EXHAUSTED is a full queue or volume, "
        "UNAUTHENTICATED a bad token, NOT_FOUND an unknown id."), 8, 8)
    L.add(timeseries(
        "Unary RPC latency p99", targets(
            (f'histogram_quantile(0.99, sum by (le, grpc_method) (rate({M["rpc_seconds"]}_bucket'
             f'{{{SEL}, grpc_method!~"WatchJob|DownloadArtifact|UploadModel|ServerReflectionInfo"}}[{RI}])))',
             "{{grpc_method}}"),
        ), unit="s", desc="Control calls must not wait behind job work; streams are left out "
        "(they last as long as the job or the transfer)."), 8, 8)

    # --- transfers ------------------------------------------------------------------------
    L.row("Transfers")
    L.add(timeseries(
        "Upload and download throughput", targets(
            (f'sum(rate({M["upload"]}{{{SEL}}}[{RI}]))', "upload"),
            (f'-sum(rate({M["download"]}{{{SEL}}}[{RI}]))', "download"),
        ), unit="Bps", min0=False, desc="UploadModel bytes in (up), DownloadArtifact bytes out (down)."), 12, 8)
    L.add(timeseries(
        "Uploads by outcome", targets(
            (f'sum by (outcome) (rate({M["uploads"]}{{{SEL}}}[{RI}]))', "{{outcome}}"),
        ), unit="reqps", stack=True, desc="Finished UploadModel calls: stored (new model), "
        "deduplicated (same sha256 already stored), rejected."), 12, 8)
    L.add(stat(
        "Uploaded (range)", [target(f'sum(increase({M["upload"]}{{{SEL}}}[$__range]))', "up")],
        unit="bytes"), 12, 4)
    L.add(stat(
        "Downloaded (range)", [target(f'sum(increase({M["download"]}{{{SEL}}}[$__range]))', "down")],
        unit="bytes"), 12, 4)

    # --- quality --------------------------------------------------------------------------
    sq = M["sqnr"]
    L.row("Quality: SplitQuant vs plain quantization")
    L.add(timeseries(
        "Layer SQNR: split vs plain (median and p10)", targets(
            *[(f'histogram_quantile({q}, sum by (le, method) (rate({sq}_bucket{{{SEL}}}[{RI}])))',
               f'{{{{method}}}} p{int(q * 100)}') for q in (0.5, 0.1)]
        ), unit="dB", min0=False,
        desc="Per-layer signal-to-quantization-noise ratio of the weights, with SplitQuant "
        "(split) and plain linear quantization (plain) at the same bits. Higher is better; "
        "the gap between the two lines is what splitting buys."), 12, 8)
    L.add(stat(
        "Mean SQNR gain from splitting (range)", [target(
            f'(sum(increase({sq}_sum{{{SEL}, method="split"}}[$__range])) / '
            f'sum(increase({sq}_count{{{SEL}, method="split"}}[$__range]))) - '
            f'(sum(increase({sq}_sum{{{SEL}, method="plain"}}[$__range])) / '
            f'sum(increase({sq}_count{{{SEL}, method="plain"}}[$__range])))', "gain")],
        unit="dB", decimals=1,
        thresholds=[{"color": "red", "value": None}, {"color": "orange", "value": 0},
                    {"color": "green", "value": 1}],
        desc="Mean layer SQNR with SplitQuant minus mean layer SQNR with plain quantization."), 6, 8)
    L.add(timeseries(
        "Compression ratio", targets(*quantiles(M["ratio"], qs=(0.1, 0.5, 0.9))),
        unit="x", decimals=2, desc="Input model bytes / output model bytes per finished job."), 6, 8)
    L.add(heatmap("SQNR distribution: split",
                  f'sum by (le) (increase({sq}_bucket{{{SEL}, method="split"}}[$__interval]))'), 12, 8)
    L.add(heatmap("SQNR distribution: plain",
                  f'sum by (le) (increase({sq}_bucket{{{SEL}, method="plain"}}[$__interval]))'), 12, 8)

    bi = M["build_info"]
    return {
        "uid": "sq-overview",
        "title": "sq: SplitQuant service",
        "description": "Traffic, latency, saturation, transfers and quantization quality of sq-server.",
        "tags": ["sq", "onnx", "quantization"],
        "editable": False,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "",
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "links": [],
        "annotations": {"list": [
            {
                "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                "name": "Annotations & Alerts", "type": "dashboard",
            },
            {
                "name": "sq version", "datasource": DS, "enable": True, "hide": False,
                "iconColor": "purple",
                # A version label value that was not there a minute earlier: a deploy.
                "expr": f'count by (version) ({bi}{{{SEL}}}) unless '
                        f'count by (version) ({bi}{{{SEL}}} offset 2m)',
                "step": "60s", "titleFormat": "sq {{version}}",
                "textFormat": "sq {{version}} started exporting metrics",
                "useValueForTime": False,
            },
        ]},
        "templating": {"list": [
            {
                "name": "datasource", "label": "Data source", "type": "datasource",
                "query": "prometheus", "current": {"selected": False, "text": "Prometheus",
                                                    "value": "sq-prometheus"},
                "hide": 0, "refresh": 1, "regex": "", "includeAll": False, "multi": False,
                "options": [], "skipUrlSync": False,
            },
            {
                "name": "job", "label": "Job", "type": "query", "datasource": DS,
                "definition": f"label_values({bi}, job)",
                "query": {"query": f"label_values({bi}, job)", "refId": "job"},
                "refresh": 2, "includeAll": False, "multi": False,
                "current": {"selected": True, "text": "sq", "value": "sq"},
                "hide": 0, "regex": "", "sort": 1, "options": [], "skipUrlSync": False,
            },
            {
                "name": "instance", "label": "Instance", "type": "query", "datasource": DS,
                "definition": f'label_values({bi}{{job=~"$job"}}, instance)',
                "query": {"query": f'label_values({bi}{{job=~"$job"}}, instance)', "refId": "instance"},
                "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                "hide": 0, "regex": "", "sort": 1, "options": [], "skipUrlSync": False,
            },
        ]},
        "panels": L.panels,
    }


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards", "sq.json")
    if len(sys.argv) > 1:
        out = sys.argv[1]
    with open(out, "w") as f:
        json.dump(build(), f, indent=2, sort_keys=False)
        f.write("\n")


if __name__ == "__main__":
    main()
