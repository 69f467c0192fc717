// potline-twin HMI: one page, hash routes, live updates over server-sent events.
// Plain JS, no build step; every string from the server goes in as text (never as HTML).
"use strict";
(() => {
  const FLAG = { AE: 1, TAPPING: 2, ANODE_CHANGE: 4, LOCAL: 8, BAD: 16, CUT: 32 };
  const FEED = { 1: "U", 2: "O", 3: "N" };
  const FEED_NAME = { 1: "underfeed", 2: "overfeed", 3: "nominal feed" };
  const CATEGORIES = ["ae", "setpoint", "mode", "alarm", "comms", "control", "daemon"];
  const CELL_TRENDS = [
    ["CellVoltage", "Cell voltage"], ["PseudoResistance", "Pseudo-resistance"], ["AluminaEstimate", "Alumina (estimate)"],
    ["AcdEstimate", "ACD (estimate)"], ["FeedShots", "Feeder shots (cumulative)"], ["BeamPosition", "Beam movement (cumulative)"],
  ];
  const RANGES = [["1 h", 3600], ["8 h", 8 * 3600], ["24 h", 86400], ["7 d", 7 * 86400]];

  const S = {
    plant: null, session: null, snap: null, alarms: null, pushes: 0, tiles: [], charts: [], timers: [],
    onSnap: null, onAlarms: null, range: 3600, cellAlarm: new Set(),
  };
  // exposed for tests and for the curious (read-only use)
  window.HMI = S;
  // trends end at the plant timeline's "now" (the latest scan): they wait for the first one
  let snapWaiters = [];
  function withSnap(fn) { if (S.snap) fn(); else snapWaiters.push(fn); }

  // ------------------------------------------------------------------ helpers

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k === "data") for (const [dk, dv] of Object.entries(v)) e.dataset[dk] = dv;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (v === true) e.setAttribute(k, "");
      else e.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  async function api(path, body) {
    const opts = { credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      opts.method = "POST";
      opts.headers["Content-Type"] = "application/json";
      if (S.session && S.session.csrf) opts.headers["X-CSRF-Token"] = S.session.csrf;
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(path, opts);
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      const err = new Error((data && data.error) || `${r.status} ${r.statusText}`);
      err.status = r.status;
      throw err;
    }
    return data;
  }

  function banner(text, kind) {
    const b = document.getElementById("banner");
    b.textContent = text || "";
    b.className = "banner" + (kind ? " " + kind : "");
    b.hidden = !text;
  }

  const pad = (n) => String(n).padStart(2, "0");
  function fmtTime(unix) {
    if (unix === null || unix === undefined) return "";
    const d = new Date(unix * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function fmtIso(iso) { return iso ? fmtTime(Date.parse(iso) / 1000) : ""; }
  function fmt(v, nd) { return v === null || v === undefined ? "–" : Number(v).toFixed(nd); }
  // plant time (alarms, journal) -> the timeline the snapshot and history use
  function plantToUnix(t) { return S.snap && t !== null && t !== undefined ? t + (S.snap.t - S.snap.t_plant_s) : null; }
  function nowUnix() { return S.snap ? S.snap.t : Date.now() / 1000; }
  function cellName(index) {
    for (const room of S.plant.rooms) for (const c of room.cells) if (c.index === index) return { room: room.name, number: c.number };
    return null;
  }
  const num3 = (n) => String(n).padStart(3, "0");
  const isOperator = () => !!(S.session && S.session.role === "operator");

  // ------------------------------------------------------------------ session and header

  async function loadSession() {
    S.session = await api("/api/session");
    const s = S.session;
    document.getElementById("who").textContent = s.user ? `${s.user} (${s.role})` : "";
    document.getElementById("login-link").hidden = !!s.user || !s.logins;
    document.getElementById("logout").hidden = !s.user;
  }

  async function logout() {
    try { await api("/api/logout", {}); } catch (e) { banner(e.message, "error"); }
    await loadSession();
    route();
  }

  function renderHeader() {
    const snap = S.snap;
    if (snap) {
      const m = document.getElementById("mode");
      m.textContent = snap.mode;
      m.className = "mode " + snap.mode;
      document.getElementById("clock").textContent = fmtTime(snap.t);
    }
    const a = S.alarms;
    const badge = document.getElementById("alarm-count");
    const n = a ? (a.counts.unack || 0) + (a.counts.rtn_unack || 0) : 0;
    badge.textContent = String(n);
    badge.hidden = n === 0;
  }

  // ------------------------------------------------------------------ live updates

  function connect() {
    const live = document.getElementById("live");
    const es = new EventSource("/api/stream");
    es.onopen = () => live.classList.remove("down");
    es.onerror = () => live.classList.add("down");
    es.addEventListener("snapshot", (ev) => {
      S.snap = JSON.parse(ev.data);
      S.pushes += 1;
      const waiting = snapWaiters;
      snapWaiters = [];
      for (const fn of waiting) fn();
      renderHeader();
      if (S.onSnap) S.onSnap();
    });
    es.addEventListener("alarms", (ev) => {
      S.alarms = JSON.parse(ev.data);
      S.cellAlarm = new Set(S.alarms.alarms.filter((x) => x.cell_index !== null && (x.state === "unack" || x.state === "acked" || x.state === "rtn_unack")).map((x) => x.cell_index));
      renderHeader();
      if (S.onAlarms) S.onAlarms();
      if (S.onSnap) S.onSnap();
    });
  }

  // ------------------------------------------------------------------ router

  function clearView() {
    for (const c of S.charts) c.destroy();
    S.charts = [];
    for (const t of S.timers) clearInterval(t);
    S.timers = [];
    S.onSnap = S.onAlarms = null;
    S.tiles = [];
    snapWaiters = [];
    banner("");
    const v = document.getElementById("view");
    v.replaceChildren();
    return v;
  }

  function route() {
    const h = location.hash || "#/";
    const parts = h.slice(2).split("/");
    for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.getAttribute("href") === "#/" + parts[0]);
    const v = clearView();
    if (!S.plant) { v.append(el("p", { class: "muted", text: "Log in to see the plant." })); if (parts[0] !== "login") return; }
    switch (parts[0]) {
      case "": return overview(v);
      case "cell": return cellPage(v, Number(parts[1]));
      case "room": return roomPage(v, Number(parts[1]));
      case "lines": return linesPage(v);
      case "alarms": return alarmsPage(v);
      case "ae": return aePage(v);
      case "journal": return journalPage(v);
      case "login": return loginPage(v);
      default: v.append(el("p", { text: "No such page." }));
    }
  }

  // ------------------------------------------------------------------ overview: the potroom map

  function modePanel() {
    const op = isOperator();
    const sel = el("select", { id: "mode-select", disabled: !op }, ["observe", "shadow", "control"].map((m) => el("option", { value: m, text: m })));
    if (S.snap) sel.value = S.snap.mode;
    const reason = el("input", { id: "mode-reason", placeholder: "reason", size: "24", disabled: !op });
    const btn = el("button", { id: "mode-apply", type: "button", disabled: !op, text: "Change mode", onclick: async () => {
      try {
        const r = await api("/api/mode", { mode: sel.value, reason: reason.value });
        banner(`Mode ${r.mode} (was ${r.previous})`);
      } catch (e) { banner(`Mode change refused: ${e.message}`, "error"); }
    } });
    return el("div", { class: "panel row" }, el("strong", { text: "Mode" }), sel, reason, btn,
      op ? null : el("span", { class: "muted", text: "operators only" }));
  }

  function overview(v) {
    const lines = el("div", { class: "lines", id: "lines" });
    v.append(lines, modePanel());
    v.append(el("div", { class: "legend" },
      el("span", {}, el("span", { class: "cell" }), " normal"), el("span", {}, el("span", { class: "cell ae" }), " anode effect"),
      el("span", {}, el("span", { class: "cell bad" }), " bad data"), el("span", {}, el("span", { class: "cell cut" }), " cut out"),
      el("span", {}, el("span", { class: "cell local" }), " local control"), el("span", {}, el("span", { class: "cell alarm" }), " alarm"),
      el("span", { text: "T tapping · A anode change · U/O/N underfeed/overfeed/nominal" })));
    const lineCards = S.plant.lines.map((name, i) => {
      const card = el("div", { class: "line-card", data: { line: String(i) } }, el("strong", { text: name }),
        el("div", { class: "big" }, el("span", { class: "i" }), " kA"), el("div", { class: "muted" }, "U ", el("span", { class: "u" }), " V · SP ", el("span", { class: "sp" }), " kA"));
      lines.append(card);
      return card;
    });
    S.plant.rooms.forEach((room, r) => {
      v.append(el("h2", {}, room.name, el("a", { href: `#/room/${r}`, text: "trends" })));
      const grid = el("div", { class: "cells", data: { room: room.name } });
      for (const c of room.cells) {
        const tile = el("a", { class: "cell", href: `#/cell/${c.index}`, data: { cell: String(c.index), number: String(c.number) } },
          el("span", { class: "num", text: num3(c.number) }), el("span", { class: "v", text: "–" }), el("span", { class: "tags" }));
        S.tiles[c.index] = tile;
        grid.append(tile);
      }
      v.append(grid);
    });
    S.onSnap = () => {
      const s = S.snap;
      if (!s) return;
      lineCards.forEach((card, i) => {
        card.querySelector(".i").textContent = fmt(s.lines.i_ka[i], 1);
        card.querySelector(".u").textContent = fmt(s.lines.u_v[i], 0);
        card.querySelector(".sp").textContent = fmt(s.lines.sp_ka[i], 1);
        card.classList.toggle("bad", !s.lines.ok[i]);
      });
      const u = s.cells.u, flags = s.cells.flags, feed = s.cells.feed;
      for (let i = 0; i < S.tiles.length; i++) {
        const t = S.tiles[i];
        if (!t) continue;
        const f = flags[i];
        t.children[1].textContent = u[i] === null ? "–" : u[i].toFixed(2);
        let tags = "";
        if (f & FLAG.TAPPING) tags += "T";
        if (f & FLAG.ANODE_CHANGE) tags += "A";
        if (FEED[feed[i]]) tags += (tags ? " " : "") + FEED[feed[i]];
        t.children[2].textContent = tags;
        t.classList.toggle("ae", !!(f & FLAG.AE));
        t.classList.toggle("bad", !!(f & FLAG.BAD));
        t.classList.toggle("cut", !!(f & FLAG.CUT));
        t.classList.toggle("local", !!(f & FLAG.LOCAL));
        t.classList.toggle("alarm", S.cellAlarm.has(i));
        t.dataset.flags = String(f);
        t.dataset.u = u[i] === null ? "" : String(u[i]);
        t.dataset.seq = String(s.seq);
        const names = [];
        if (f & FLAG.AE) names.push("anode effect");
        if (f & FLAG.TAPPING) names.push("tapping");
        if (f & FLAG.ANODE_CHANGE) names.push("anode change");
        names.push(f & FLAG.LOCAL ? "local" : "remote");
        if (f & FLAG.BAD) names.push("bad data");
        if (f & FLAG.CUT) names.push("cut out");
        if (FEED_NAME[feed[i]]) names.push(FEED_NAME[feed[i]]);
        t.title = names.join(", ");
      }
    };
    S.onSnap();
  }

  // ------------------------------------------------------------------ trends

  function rangeButtons(onPick) {
    const box = el("div", { class: "ranges row" }, el("span", { class: "muted", text: "Range" }));
    for (const [label, s] of RANGES) {
      box.append(el("button", { type: "button", class: S.range === s ? "active" : "", text: label, onclick: () => { S.range = s; onPick(); } }));
    }
    return box;
  }

  function chartBox(title, id) {
    const box = el("div", { class: "chart", id }, el("h3", { text: title }), el("div", { class: "plot" }), el("div", { class: "meta" }));
    return box;
  }

  function drawChart(box, series) {
    // series: [{label, t, y, min, max, unit}] sharing the first series' time axis
    const plot = box.querySelector(".plot");
    plot.replaceChildren();
    const s0 = series[0];
    if (!s0.t.length) { plot.append(el("p", { class: "muted", text: "No data in this range." })); return null; }
    const data = [s0.t];
    const spec = [{}];
    for (const s of series) {
      data.push(s.y);
      spec.push({ label: s.label, stroke: s.color || "#1f5f99", width: 1.5, spanGaps: false });
      if (s.min && s.max && s.band) {
        data.push(s.min, s.max);
        spec.push({ label: s.label + " min", stroke: "#9fb9d3", width: 1 }, { label: s.label + " max", stroke: "#9fb9d3", width: 1 });
      }
    }
    const width = Math.max(plot.clientWidth || box.clientWidth || 500, 300);
    const opts = { width, height: 200, series: spec, scales: { x: { time: true } }, axes: [{}, { label: s0.unit || "" }], legend: { show: series.length <= 8 } };
    const u = new uPlot(opts, data, plot);
    S.charts.push(u);
    return u;
  }

  async function tagChart(box, tags, labels, colors) {
    const end = nowUnix();
    const start = end - S.range;
    try {
      const got = await Promise.all(tags.map((tag) => api(`/api/history?tag=${encodeURIComponent(tag)}&start=${start}&end=${end}`)));
      const base = got[0];
      const series = got.map((g, i) => ({ label: labels[i], t: base.t, y: g.t.length === base.t.length ? g.mean : base.t.map(() => null), min: g.min, max: g.max, band: g.resolution_s > 0 && tags.length === 1, unit: g.unit, color: colors ? colors[i] : null }));
      drawChart(box, series);
      const res = base.resolution_s === 0 ? "raw" : base.resolution_s === 60 ? "1 min" : "1 h";
      // data quality (the mirror's status codes, kept in the history): Bad points are gaps, Uncertain ones drawn
      const bad = got.reduce((n, g) => n + (g.bad || 0), 0), unc = got.reduce((n, g) => n + (g.uncertain || 0), 0);
      const qual = (unc ? ` · ${unc} uncertain` : "") + (bad ? ` · ${bad} bad` : "");
      box.querySelector(".meta").textContent = `${base.t.length} points · ${res}${qual} · ${fmtTime(start)} – ${fmtTime(end)}`;
      box.dataset.bad = String(bad);
      box.dataset.uncertain = String(unc);
      box.dataset.points = String(base.t.length);
      box.dataset.first = base.t.length ? String(base.t[0]) : "";
      box.dataset.last = base.t.length ? String(base.t[base.t.length - 1]) : "";
      box.dataset.start = String(start);
      box.dataset.end = String(end);
      box.dataset.resolution = String(base.resolution_s);
    } catch (e) {
      box.querySelector(".meta").textContent = `no history: ${e.message}`;
      box.dataset.points = "0";
    }
    box.dataset.loaded = "1";
  }

  function cellPage(v, index) {
    const where = cellName(index);
    if (!where) { v.append(el("p", { text: "No such cell." })); return; }
    const prefix = `${where.room}.Cell${num3(where.number)}`;
    const now = el("div", { class: "kv", id: "cell-now" });
    const charts = el("div", { class: "charts" });
    const events = el("tbody");
    const draw = () => {
      for (const c of S.charts) c.destroy();
      S.charts = [];
      charts.replaceChildren();
      for (const [q, title] of CELL_TRENDS) {
        const box = chartBox(title, "trend-" + q);
        charts.append(box);
        tagChart(box, [`${prefix}.${q}`], [title]);
      }
      buttons.replaceWith((buttons = rangeButtons(draw)));
    };
    let buttons = rangeButtons(draw);
    v.append(el("h2", {}, `${where.room} / Cell ${num3(where.number)}`), el("div", { class: "panel" }, now), sampleForm(where), buttons, charts,
      el("h2", { text: "Journal" }), el("table", {}, el("thead", {}, el("tr", {}, ["Time", "Kind", "Detail", "User"].map((h) => el("th", { text: h })))), events));
    S.onSnap = () => {
      const s = S.snap;
      if (!s) return;
      const f = s.cells.flags[index];
      const states = [];
      if (f & FLAG.AE) states.push("ANODE EFFECT");
      if (f & FLAG.TAPPING) states.push("tapping");
      if (f & FLAG.ANODE_CHANGE) states.push("anode change");
      states.push(f & FLAG.LOCAL ? "local" : "remote");
      if (f & FLAG.BAD) states.push("bad data");
      if (f & FLAG.CUT) states.push("cut out");
      now.replaceChildren(el("span", { text: "Voltage" }), el("strong", { id: "cell-u", text: `${fmt(s.cells.u[index], 3)} V` }),
        el("span", { text: "State" }), el("span", { id: "cell-state", text: states.join(", ") }),
        el("span", { text: "Feeding" }), el("span", { text: FEED_NAME[s.cells.feed[index]] || "–" }));
    };
    S.onSnap();
    withSnap(draw);
    api(`/api/journal?room=${encodeURIComponent(where.room)}&cell=${where.number}&limit=50`).then((r) => {
      events.replaceChildren(...r.events.map((e) => el("tr", {}, el("td", { text: fmtIso(e.ts_utc) }), el("td", { text: e.kind }), el("td", { text: e.detail || "" }), el("td", { text: e.user || "" }))));
    }).catch((e) => banner(e.message, "error"));
  }

  // an operator's bath sample of this cell: journalled with the user, given to the observer
  function sampleForm(where) {
    if (!isOperator()) return null;
    const fields = [["alf3_excess_wt_pct", "AlF3 excess [wt %]", "0", "25", "0.1"], ["bath_temp_c", "Bath temperature [°C]", "900", "1050", "1"],
      ["alumina_wt_pct", "Alumina [wt %]", "0.5", "10", "0.01"]];
    const inputs = fields.map(([name, label, min, max, step]) => [name, el("input", { id: `sample-${name}`, type: "number", min, max, step, size: "6", title: label })]);
    const comment = el("input", { id: "sample-comment", placeholder: "comment", size: "18" });
    const status = el("span", { id: "sample-status", class: "muted" });
    const form = el("form", { id: "sample-form", class: "panel row" }, el("strong", { text: "Bath sample" }),
      ...inputs.map(([name, input], i) => el("label", {}, fields[i][1], " ", input)), comment,
      el("button", { id: "sample-submit", type: "submit", text: "Enter sample" }), status);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = { room: where.room, cell: where.number, comment: comment.value };
      for (const [name, input] of inputs) if (input.value !== "") body[name] = Number(input.value);
      try {
        const r = await api("/api/samples", body);
        status.textContent = `taken: ${Object.entries(r.values).map(([k, x]) => `${k} ${x}`).join(", ")} (by ${r.by})`;
        form.dataset.taken = String(Number(form.dataset.taken || 0) + 1);
        for (const [, input] of inputs) input.value = "";
        comment.value = "";
        banner("");
      } catch (e) { status.textContent = ""; banner(`Sample refused: ${e.message}`, "error"); }
    });
    return form;
  }

  function linesPage(v) {
    const charts = el("div", { class: "charts" });
    const draw = () => {
      for (const c of S.charts) c.destroy();
      S.charts = [];
      charts.replaceChildren();
      S.plant.lines.forEach((line) => {
        const a = chartBox(`${line}: current and setpoint`, `trend-${line}-current`);
        const b = chartBox(`${line}: voltage`, `trend-${line}-voltage`);
        charts.append(a, b);
        tagChart(a, [`${line}.LineCurrent`, `${line}.LineSetpoint`], ["current", "setpoint"], ["#1f5f99", "#e07b00"]);
        tagChart(b, [`${line}.LineVoltage`], ["voltage"]);
      });
      buttons.replaceWith((buttons = rangeButtons(draw)));
    };
    let buttons = rangeButtons(draw);
    const plan = el("div", { id: "plan" });
    v.append(el("h2", { text: "Lines" }), plan, buttons, charts);
    withSnap(draw);
    planPanel(plan);
  }

  // ------------------------------------------------------------------ the plan and grid requests

  function planPanel(box) {
    const load = async () => {
      let r;
      try { r = await api("/api/plan"); } catch (e) { if (e.status === 404) box.replaceChildren(); return; }
      box.replaceChildren(renderPlan(r));
    };
    load();
    S.timers.push(setInterval(load, 5000));
  }

  function renderPlan(r) {
    const out = el("div", { class: "panel plan" });
    const p = r.plan;
    for (const g of r.grid || []) {
      const on = g.state !== "idle";
      const what = g.state === "shedding"
        ? `grid limit ${fmt(g.limit_mw, 1)} MW: line capped at ${fmt(g.cap_ka, 1)} kA (target ${fmt(g.target_ka, 1)} kA${g.full_shed ? ", full shed: lowest safe current" : ""})`
        : g.state === "recovering" ? `grid limit cleared: back to the plan at ${fmt(g.cap_ka, 1)} kA and rising` : "no grid request";
      out.append(el("div", { class: "row grid-state" + (on ? " shed" : ""), data: { line: g.line, state: g.state } },
        el("strong", { text: `${g.line}` }), el("span", { text: what })));
    }
    if (!p) {
      out.append(el("p", { class: "muted", text: "No plan loaded." }));
    } else {
      const k = p.step;
      out.append(el("div", { class: "row" }, el("strong", { text: `Plan ${p.name || "(unnamed)"}` }),
        el("span", { class: "plan-state", text: p.state === "running" ? `step ${k + 1} of ${p.n_steps}` : p.state }),
        p.next_step_t ? el("span", { class: "muted", text: `next step ${fmtTime(p.next_step_t)}` }) : null,
        el("span", { class: "muted", text: `from ${p.source}` })));
      const t0 = Date.parse(p.t0_utc) / 1000;
      const head = el("tr", {}, el("th", { text: "step" }), el("th", { text: "from" }), p.lines.map((n) => el("th", { text: `${n} kA` })));
      const rows = p.steps.map((s, i) => el("tr", { class: i === k ? "current" : null },
        el("td", { class: "num", text: String(i + 1) }), el("td", { text: fmtTime(t0 + i * p.step_s) }),
        s.line_current_ka.map((v, j) => el("td", { class: "num", text: fmt(v, 1) + (s.hx_duty_kw ? ` (HX ${fmt(s.hx_duty_kw[j], 1)} kW)` : "") }))));
      out.append(el("table", { class: "plan-steps" }, el("thead", {}, head), el("tbody", {}, rows)));
      const kv = (obj) => el("div", { class: "kv" }, Object.entries(obj || {}).flatMap(([key, val]) => [el("span", { class: "muted", text: key }), el("span", { text: typeof val === "object" ? JSON.stringify(val) : String(val) })]));
      out.append(el("h3", { text: "Constraints" }), kv(p.constraints));
      if (p.objective && Object.keys(p.objective).length) out.append(el("h3", { text: "Objective" }), kv(p.objective));
    }
    if (r.last_rejected) out.append(el("p", { class: "muted", text: `Last plan refused: ${r.last_rejected.file}: ${r.last_rejected.reason}` }));
    return out;
  }

  function roomPage(v, r) {
    const room = S.plant.rooms[r];
    if (!room) { v.append(el("p", { text: "No such room." })); return; }
    const box = chartBox(`${room.name}: every cell's voltage`, "trend-room");
    const draw = async () => {
      for (const c of S.charts) c.destroy();
      S.charts = [];
      const end = nowUnix();
      const start = end - S.range;
      try {
        const g = await api(`/api/history/group?group=${encodeURIComponent(room.name + ".CellVoltage")}&start=${start}&end=${end}`);
        const series = g.mean.map((y, i) => ({ label: g.tags[i].split(".")[1], t: g.t, y, unit: g.unit, color: `hsl(${(i * 137) % 360} 60% 40%)` }));
        if (series.length) drawChart(box, series);
        box.querySelector(".meta").textContent = `${g.tags.length} cells × ${g.t.length} points · resolution ${g.resolution_s || "raw"} s`;
        box.dataset.points = String(g.t.length);
      } catch (e) { box.querySelector(".meta").textContent = `no history: ${e.message}`; }
      buttons.replaceWith((buttons = rangeButtons(draw)));
    };
    let buttons = rangeButtons(draw);
    v.append(el("h2", { text: room.name }), buttons, box);
    withSnap(draw);
  }

  // ------------------------------------------------------------------ alarms

  function alarmsPage(v) {
    const tbody = el("tbody", { id: "alarm-rows" });
    const flood = el("div", { id: "flood" });
    const all = el("input", { type: "checkbox", id: "alarm-all" });
    let allRows = null;
    const op = isOperator();
    v.append(el("h2", { text: "Alarms" }), el("div", { class: "row" }, el("label", {}, all, " include normal alarms"),
      op ? null : el("span", { class: "muted", text: "acknowledge and shelve: operators only" })), flood,
      el("table", {}, el("thead", {}, el("tr", {}, ["Priority", "State", "Alarm", "Value", "Since", "Detail", ""].map((h) => el("th", { text: h })))), tbody));

    async function act(action, body) {
      try { await api(`/api/alarms/${action}`, body); banner(""); } catch (e) { banner(`${action}: ${e.message}`, "error"); }
    }
    function actions(a) {
      if (!op) return el("td");
      const td = el("td");
      if (a.state === "unack" || a.state === "rtn_unack") {
        td.append(el("button", { type: "button", class: "ack", text: "Acknowledge", onclick: () => act("ack", { key: a.key }) }));
      }
      if (a.state === "shelved") {
        td.append(el("button", { type: "button", class: "unshelve", text: "Unshelve", onclick: () => act("unshelve", { key: a.key }) }));
      } else if (a.state !== "suppressed" && a.priority !== "critical") {
        td.append(el("button", { type: "button", class: "shelve", text: "Shelve…", onclick: (ev) => {
          const reason = el("input", { class: "reason", placeholder: "reason", size: "18" });
          const dur = el("select", { class: "duration" }, [[900, "15 min"], [3600, "1 h"], [14400, "4 h"], [28800, "8 h"]].map(([s, l]) => el("option", { value: String(s), text: l })));
          dur.value = "3600";
          const form = el("span", { class: "shelve-form" }, reason, dur, el("button", { type: "button", class: "shelve-ok", text: "Shelve", onclick: () => act("shelve", { key: a.key, reason: reason.value, duration_s: Number(dur.value) }) }));
          ev.target.replaceWith(form);
          reason.focus();
        } }));
      }
      return td;
    }
    function render() {
      const data = allRows || S.alarms;
      if (!data) return;
      const fl = Object.entries(data.flooding || {});
      flood.replaceChildren(...fl.map(([area, n]) => el("div", { class: "banner", text: `Alarm flood in ${area}: ${n} alarms suppressed` })));
      // keep a half-typed shelving form: do not redraw under the operator's hands
      if (tbody.querySelector(".shelve-form input:focus")) return;
      tbody.replaceChildren(...data.alarms.map((a) => el("tr", { class: `state-${a.state}`, data: { key: a.key, state: a.state } },
        el("td", {}, el("span", { class: `prio ${a.priority}`, text: a.priority })),
        el("td", { class: "state", text: a.state_label }),
        el("td", {}, el("div", { text: a.message }), el("div", { class: "muted", text: a.key })),
        el("td", { class: "num", text: a.value === null ? "" : fmt(a.value, 2) }),
        el("td", { text: fmtTime(plantToUnix(a.since)) }),
        el("td", { class: "muted", text: [a.detail, a.acked_by ? `ack ${a.acked_by}` : "", a.shelved_by ? `shelved by ${a.shelved_by}: ${a.shelve_reason}` : "", Object.values(a.suppressed || {}).join("; ")].filter(Boolean).join(" · ") }),
        actions(a))));
      if (!data.alarms.length) tbody.append(el("tr", {}, el("td", { colspan: "7", class: "muted", text: "No alarms." })));
    }
    all.addEventListener("change", async () => {
      allRows = all.checked ? await api("/api/alarms?all=1") : null;
      render();
    });
    S.onAlarms = async () => { if (all.checked) allRows = await api("/api/alarms?all=1"); render(); };
    if (!S.alarms) api("/api/alarms").then((a) => { S.alarms = S.alarms || a; render(); });
    render();
  }

  // ------------------------------------------------------------------ anode effects

  function aePage(v) {
    const tbody = el("tbody", { id: "ae-rows" });
    v.append(el("h2", { text: "Anode effects" }),
      el("table", {}, el("thead", {}, el("tr", {}, ["Room", "Cell", "Start", "End", "Duration", "Peak"].map((h) => el("th", { text: h })))), tbody));
    const load = async () => {
      try {
        const r = await api("/api/ae?limit=200");
        tbody.replaceChildren(...r.anode_effects.map((a) => el("tr", {},
          el("td", { text: a.room || "" }), el("td", { class: "num", text: a.cell === null ? "" : num3(a.cell) }),
          el("td", { text: fmtIso(a.start) }), el("td", { text: a.end ? fmtIso(a.end) : "in progress" }),
          el("td", { class: "num", text: a.duration_s === null || a.duration_s === undefined ? "" : `${Math.round(a.duration_s)} s` }),
          el("td", { class: "num", text: a.peak_v === null || a.peak_v === undefined ? "" : `${fmt(a.peak_v, 1)} V` }))));
        if (!r.anode_effects.length) tbody.append(el("tr", {}, el("td", { colspan: "6", class: "muted", text: "No anode effects in the journal." })));
      } catch (e) { banner(e.message, "error"); }
    };
    load();
    S.timers.push(setInterval(load, 10000));
  }

  // ------------------------------------------------------------------ journal browser

  function journalPage(v) {
    const cat = el("select", { id: "j-category" }, el("option", { value: "", text: "all categories" }), CATEGORIES.map((c) => el("option", { value: c, text: c })));
    const kind = el("input", { id: "j-kind", placeholder: "kinds, comma separated", size: "22" });
    const room = el("select", { id: "j-room" }, el("option", { value: "", text: "all rooms" }), S.plant.rooms.map((r) => el("option", { value: r.name, text: r.name })));
    const cell = el("input", { id: "j-cell", placeholder: "cell", size: "4" });
    const since = el("input", { id: "j-since", type: "datetime-local", step: "1" });
    const until = el("input", { id: "j-until", type: "datetime-local", step: "1" });
    const limit = el("select", { id: "j-limit" }, [50, 200, 1000].map((n) => el("option", { value: String(n), text: `${n} rows` })));
    limit.value = "200";
    const tbody = el("tbody", { id: "journal-rows" });
    const more = el("button", { type: "button", id: "j-older", text: "Older", hidden: true });
    let oldest = null;
    const search = async (older) => {
      const q = new URLSearchParams();
      if (cat.value) q.append("category", cat.value);
      if (kind.value.trim()) q.set("kind", kind.value.trim());
      if (room.value) q.set("room", room.value);
      if (cell.value.trim()) q.set("cell", cell.value.trim());
      if (since.value) q.set("since", new Date(since.value).toISOString());
      const u = older && oldest ? oldest : (until.value ? new Date(until.value).toISOString() : "");
      if (u) q.set("until", u);
      q.set("limit", limit.value);
      try {
        const r = await api(`/api/journal?${q}`);
        const rows = r.events.map((e) => el("tr", { data: { id: String(e.id), kind: e.kind } },
          el("td", { class: "num", text: String(e.id) }), el("td", { text: fmtIso(e.ts_utc) }), el("td", { text: e.category }),
          el("td", { text: e.kind }), el("td", { text: [e.line, e.room, e.cell ? "Cell " + num3(e.cell) : ""].filter(Boolean).join(" / ") }),
          el("td", { text: e.user || "" }), el("td", { text: e.detail || "" })));
        if (older) tbody.append(...rows); else tbody.replaceChildren(...rows);
        if (r.events.length) oldest = r.events[r.events.length - 1].ts_utc;
        more.hidden = r.events.length < Number(limit.value);
        banner("");
      } catch (e) { banner(e.message, "error"); }
    };
    more.addEventListener("click", () => search(true));
    const form = el("form", { class: "panel row", id: "journal-form", onsubmit: (ev) => { ev.preventDefault(); oldest = null; search(false); } },
      cat, kind, room, cell, el("label", {}, "since ", since), el("label", {}, "until ", until), limit, el("button", { type: "submit", text: "Search" }));
    v.append(el("h2", { text: "Journal" }), form,
      el("table", {}, el("thead", {}, el("tr", {}, ["Id", "Time", "Category", "Kind", "Where", "User", "Detail"].map((h) => el("th", { text: h })))), tbody), more);
    search(false);
  }

  // ------------------------------------------------------------------ login

  function loginPage(v) {
    const user = el("input", { id: "login-user", autocomplete: "username", placeholder: "user" });
    const pw = el("input", { id: "login-password", type: "password", autocomplete: "current-password", placeholder: "password" });
    const msg = el("div", { id: "login-message", class: "muted" });
    const form = el("form", { class: "login panel", id: "login-form", onsubmit: async (ev) => {
      ev.preventDefault();
      msg.textContent = "…";
      try {
        await api("/api/login", { user: user.value, password: pw.value });
        await loadSession();
        await start();
        if (location.hash === "#/") route(); else location.hash = "#/";
      } catch (e) { msg.textContent = e.message; }
    } }, el("h2", { text: "Log in" }), user, pw, el("button", { type: "submit", id: "login-submit", text: "Log in" }), msg);
    v.append(form);
    user.focus();
  }

  // ------------------------------------------------------------------ start

  let started = false;
  async function start() {
    if (started) return;
    try {
      S.plant = await api("/api/plant");
    } catch (e) {
      if (e.status === 401) { route(); return; }
      throw e;
    }
    started = true;
    document.getElementById("plant").textContent = S.plant.plant;
    document.title = `${S.plant.plant} · potline-twin`;
    connect();
  }

  document.getElementById("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", route);
  (async () => {
    try {
      await loadSession();
      if (S.session.anonymous === "refuse" && !S.session.user) {
        location.hash = "#/login";
        route();
        return;
      }
      await start();
      route();
    } catch (e) { banner(`HMI could not start: ${e.message}`, "error"); }
  })();
})();
