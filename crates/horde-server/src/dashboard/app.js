// The dashboard's one script. The page is whole without it; this adds:
//  * live figures: server-sent events from /dashboard/events; the tables are fetched again,
//    already rendered, from /dashboard/tables when the event's digest says they changed;
//  * the views behind an API key (kudos, usage, ledger, own workers, the generate form, which
//    follows its request over /api/v2/generate/stream/{id}, the tier and daily quota, and for
//    moderators the suspicious workers and moving a user between tiers; rotating one's key and
//    creating, editing and deleting shared keys, each after a confirmation).
//    The key is kept in localStorage and sent only to
//    this coordinator, as the `apikey` header. Text from the API goes in with textContent.
"use strict";
(function () {
  var $ = function (id) { return document.getElementById(id); };
  var KEY_ITEM = "horde-api-key";
  if (!$("tables")) return; // a model's page: nothing live there

  // ---- live figures -------------------------------------------------------------------------
  // The page was rendered with these; the tables and chart are fetched again once they change.
  var lastDigest = $("tables").getAttribute("data-digest");
  var lastChartMinute = Math.floor(Date.now() / 60000);
  function onOverview(message) {
    var d = JSON.parse(message.data);
    $("workers-online").textContent = d.workers_online;
    $("queued-requests").textContent = d.queued_requests;
    $("queued-mps").textContent = d.queued_megapixelsteps.toFixed(1);
    $("images-hour").textContent = d.images_last_hour;
    var minute = Math.floor(Date.now() / 60000);
    if (d.digest !== lastDigest || minute !== lastChartMinute) {
      refreshChart();
      lastChartMinute = minute;
    }
    if (d.digest !== lastDigest && refreshTables()) lastDigest = d.digest;
  }
  function refreshChart() {
    fetch("/dashboard/throughput.svg").then(function (r) { return r.text(); }).then(function (svg) {
      $("chart").innerHTML = svg; // rendered and escaped by the coordinator
    }).catch(function () {});
  }
  // Not while the keyboard is in the tables (a swap would lose the focus): retried next event.
  function refreshTables() {
    var tables = $("tables");
    if (tables.contains(document.activeElement)) return false;
    fetch("/dashboard/tables" + location.search).then(function (r) { return r.text(); })
      .then(function (html) { tables.innerHTML = html; }).catch(function () {});
    return true;
  }
  if (window.EventSource) {
    new EventSource("/dashboard/events").addEventListener("overview", onOverview);
  }

  // ---- the API, with the key ----------------------------------------------------------------
  function api(method, path, body) {
    var headers = { "apikey": localStorage.getItem(KEY_ITEM) || "" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return fetch("/api/v2" + path, {
      method: method, headers: headers, body: body === undefined ? undefined : JSON.stringify(body)
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (json) {
        if (!r.ok) throw new Error(json.message || (r.status + " " + r.statusText));
        return json;
      });
    });
  }
  function cell(row, text, numeric) {
    var td = row.insertCell();
    td.textContent = text;
    if (numeric) td.className = "n";
    return td;
  }
  function checkbox(td, label, checked, onChange) {
    var box = document.createElement("input");
    box.type = "checkbox";
    box.checked = checked;
    box.setAttribute("aria-label", label);
    box.addEventListener("change", function () { onChange(box.checked, box); });
    td.appendChild(box);
  }
  function button(td, label, onClick) {
    var b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.addEventListener("click", function () { onClick(b); });
    td.appendChild(b);
  }
  function showError(error) { $("account-error").textContent = error.message || String(error); }

  // ---- account ------------------------------------------------------------------------------
  var me = null;
  function loadAccount() {
    $("account-error").textContent = "";
    return api("GET", "/find_user").then(function (user) {
      me = user;
      $("my-name").textContent = user.username;
      $("my-kudos").textContent = Math.round(user.kudos);
      $("my-images").textContent = user.records.request.image;
      $("my-mps").textContent = user.records.usage.megapixelsteps.toFixed(1);
      $("my-made").textContent = user.records.fulfillment.image;
      showQuota(user.daily_quota);
      $("account-view").hidden = false;
      $("forget-key").hidden = false;
      document.querySelectorAll(".mod-only").forEach(function (e) { e.hidden = !user.moderator; });
      loadWorkers(user);
      loadSharedKeys(user);
      loadLedger(user);
      loadModels();
      $("moderation").hidden = !user.moderator;
      if (user.moderator) loadSuspicious();
    }).catch(function (e) { $("account-view").hidden = true; showError(e); });
  }
  // The tier, what was requested today against its limits (0: none), when the count restarts.
  function showQuota(q) {
    if (!q) return;
    $("my-tier").textContent = q.tier;
    var body = $("my-quota").tBodies[0];
    body.textContent = "";
    [["Images", q.images_used, q.images_per_day], ["Megapixelsteps", q.megapixelsteps_used, q.megapixelsteps_per_day],
     ["Texts", q.texts_used, q.texts_per_day], ["Tokens", q.tokens_used, q.tokens_per_day]].forEach(function (r) {
      var row = body.insertRow();
      cell(row, r[0]);
      cell(row, Math.round(r[1] * 10) / 10, true);
      cell(row, r[2] > 0 ? String(r[2]) : "no limit", true);
    });
    $("quota-reset").textContent = "The count starts again at " + new Date(q.resets_at).toLocaleString() +
      " (in " + Math.ceil(q.resets_in / 60) + " min).";
  }
  // Moderators: look a user up by id, then move them to another tier, after a confirmation.
  var tierTarget = null;
  function lookUpTier(event) {
    event.preventDefault();
    $("tier-status").textContent = "";
    api("GET", "/users/" + encodeURIComponent($("tier-user").value)).then(function (user) {
      tierTarget = user;
      var q = user.daily_quota || { tier: "", tiers: [] };
      $("tier-current").textContent = user.username + " is in the tier " + q.tier + ".";
      var select = $("tier-select");
      select.textContent = "";
      (q.tiers || []).forEach(function (t) { select.add(new Option(t, t)); });
      select.value = q.tier;
      $("tier-move").hidden = false;
    }).catch(function (e) { $("tier-move").hidden = true; showError(e); });
  }
  function moveTier() {
    var tier = $("tier-select").value;
    if (!tierTarget || !confirm("Move " + tierTarget.username + " to the tier " + tier + "?")) return;
    api("PUT", "/users/" + tierTarget.id, { tier: tier }).then(function () {
      $("tier-status").textContent = tierTarget.username + " is now in the tier " + tier + ".";
      $("tier-current").textContent = tierTarget.username + " is in the tier " + tier + ".";
      if (me && tierTarget.id === me.id) loadAccount();
    }).catch(showError);
  }
  // ---- keys: one's own (rotated) and shared keys (created, listed, edited, deleted) ----------
  // Every change asks for confirmation; a new key is shown once.
  function rotateKey() {
    if (!me || !confirm("Rotate your API key? The old key stops working at once, everywhere.")) return;
    api("POST", "/users/" + me.id + "/reset_key").then(function (answer) {
      localStorage.setItem(KEY_ITEM, answer.api_key);
      $("new-key").textContent = answer.api_key;
      $("rotated").hidden = false;
    }).catch(showError);
  }
  var SK_FIELDS = [["sk-kudos", "kudos"], ["sk-expiry", "expiry"], ["sk-pixels", "max_image_pixels"],
    ["sk-steps", "max_image_steps"], ["sk-tokens", "max_text_tokens"]];
  var editing = null; // the shared key being edited: its details as listed
  var editExpiry = null; // its expiry in days as the form showed it
  function loadSharedKeys(user) {
    var body = $("my-sharedkeys").tBodies[0];
    Promise.all((user.sharedkey_ids || []).map(function (id) {
      return api("GET", "/sharedkeys/" + id).catch(function () { return null; });
    })).then(function (keys) {
      body.textContent = "";
      keys.filter(Boolean).forEach(function (k) {
        var row = body.insertRow();
        cell(row, k.name);
        cell(row, k.kudos < 0 ? "no limit" : k.kudos, true);
        cell(row, k.utilized, true);
        cell(row, k.expiry ? new Date(k.expiry).toLocaleString() : "never");
        cell(row, k.max_image_pixels, true);
        cell(row, k.max_image_steps, true);
        cell(row, k.max_text_tokens, true);
        var actions = row.insertCell();
        button(actions, "Edit " + k.name, function () { editSharedKey(k); });
        button(actions, "Delete " + k.name, function () {
          if (!confirm("Delete the shared key " + k.name + "? It stops working at once.")) return;
          api("DELETE", "/sharedkeys/" + k.id).then(function () {
            $("sharedkey-status").textContent = "Deleted the shared key " + k.name + ".";
            loadAccount();
          }, showError);
        });
      });
      if (!body.rows.length) cell(body.insertRow(), "You have no shared key.").colSpan = 8;
    });
  }
  function editSharedKey(k) {
    editing = k;
    $("sk-id").value = k.id;
    $("sk-name").value = k.name;
    $("sk-kudos").value = k.kudos;
    $("sk-expiry").value = k.expiry ? Math.max(0, Math.ceil((Date.parse(k.expiry) - Date.now()) / 86400000)) : -1;
    $("sk-pixels").value = k.max_image_pixels;
    $("sk-steps").value = k.max_image_steps;
    $("sk-tokens").value = k.max_text_tokens;
    editExpiry = $("sk-expiry").value;
    $("sk-submit").textContent = "Save the shared key";
    $("sk-cancel").hidden = false;
    $("sk-name").focus();
  }
  function resetSharedKeyForm() {
    editing = null;
    $("sharedkey-form").reset();
    $("sk-id").value = "";
    $("sk-submit").textContent = "Create the shared key";
    $("sk-cancel").hidden = true;
  }
  function saveSharedKey(event) {
    event.preventDefault();
    var body = { name: $("sk-name").value.trim() };
    SK_FIELDS.forEach(function (f) { body[f[1]] = parseInt($(f[0]).value, 10); });
    var status = $("sharedkey-status");
    if (editing) {
      // The expiry counts from now: sent only when changed, so an edit keeps the old one.
      if ($("sk-expiry").value === editExpiry) delete body.expiry;
      if (!confirm("Save the changes to the shared key " + editing.name + "?")) return;
      api("PATCH", "/sharedkeys/" + editing.id, body).then(function (k) {
        status.textContent = "Saved the shared key " + k.name + ".";
        resetSharedKeyForm();
        loadAccount();
      }, showError);
    } else {
      if (!confirm("Create the shared key " + body.name + "?")) return;
      api("PUT", "/sharedkeys", body).then(function (k) {
        status.textContent = "Created the shared key " + k.name + ".";
        $("sharedkey-value").textContent = k.id;
        $("sharedkey-new").hidden = false;
        resetSharedKeyForm();
        loadAccount();
      }, showError);
    }
  }
  function loadWorkers(user) {
    var body = $("my-workers").tBodies[0];
    var ids = user.worker_ids || [];
    Promise.all(ids.map(function (id) {
      return api("GET", "/workers/" + id).catch(function () { return null; });
    })).then(function (workers) {
      body.textContent = "";
      workers.filter(Boolean).forEach(function (w) {
        var row = body.insertRow();
        cell(row, w.name);
        cell(row, w.online ? "online" : "offline");
        cell(row, w.requests_fulfilled, true);
        cell(row, Math.round(w.kudos_rewards), true);
        checkbox(row.insertCell(), "Maintenance of " + w.name, w.maintenance_mode, function (on, box) {
          modifyWorker(w.id, { maintenance: on }, box);
        });
        if (user.moderator) {
          checkbox(row.insertCell(), "Pause " + w.name, !!w.paused, function (on, box) {
            modifyWorker(w.id, { paused: on }, box);
          });
        }
      });
      if (!body.rows.length) cell(body.insertRow(), "You have no worker yet.").colSpan = 6;
    });
  }
  function modifyWorker(id, change, box) {
    api("PUT", "/workers/" + id, change).catch(function (e) {
      if (box) box.checked = !box.checked;
      showError(e);
    });
  }
  function loadLedger(user) {
    api("GET", "/users/" + user.id + "/ledger?limit=50").then(function (rows) {
      var body = $("my-ledger").tBodies[0];
      body.textContent = "";
      rows.forEach(function (r) {
        var row = body.insertRow();
        cell(row, new Date(r.at * 1000).toLocaleString());
        cell(row, r.kind + (r.escrow ? " (escrow)" : ""));
        cell(row, r.amount.toFixed(2), true);
        cell(row, r.request_id || "");
      });
      if (!rows.length) cell(body.insertRow(), "No kudos moved yet.").colSpan = 4;
    }).catch(showError);
  }
  function loadSuspicious() {
    api("GET", "/workers").then(function (workers) {
      var body = $("suspicious").tBodies[0];
      body.textContent = "";
      workers.filter(function (w) { return w.reputation && w.reputation.suspicion > 0; })
        .forEach(function (w) {
          var row = body.insertRow();
          cell(row, w.name + (w.paused ? " (paused)" : ""));
          cell(row, w.owner || "");
          cell(row, w.reputation.suspicion, true);
          cell(row, w.reputation.suspicions.map(function (s) { return s.reason; }).join(", "));
          var actions = row.insertCell();
          button(actions, "Clear suspicion", function () {
            api("PUT", "/workers/" + w.id, { reset_suspicion: true }).then(loadSuspicious, showError);
          });
          button(actions, w.paused ? "Resume" : "Pause", function () {
            api("PUT", "/workers/" + w.id, { paused: !w.paused }).then(loadSuspicious, showError);
          });
          var ownerId = (w.owner || "").split("#").pop();
          if (ownerId) {
            button(actions, "Flag owner", function (b) {
              api("PUT", "/users/" + ownerId, { flagged: true }).then(function () {
                b.textContent = "Owner flagged";
                b.disabled = true;
              }, showError);
            });
          }
        });
      if (!body.rows.length) cell(body.insertRow(), "No online worker is suspicious.").colSpan = 5;
    }).catch(showError);
  }
  function loadModels() {
    api("GET", "/status/models?type=image").then(function (models) {
      var select = $("gen-model");
      var chosen = select.value;
      while (select.options.length > 1) select.remove(1);
      models.forEach(function (m) { select.add(new Option(m.name + " (" + m.count + ")", m.name)); });
      select.value = chosen;
    }).catch(function () {});
  }

  // ---- generate -----------------------------------------------------------------------------
  function generate(event) {
    event.preventDefault();
    var form = event.target;
    var number = function (name) { return parseInt(form.elements[name].value, 10); };
    var request = {
      prompt: form.elements.prompt.value,
      params: { width: number("width"), height: number("height"), steps: number("steps"), n: number("n") },
      r2: true
    };
    if (form.elements.model.value) request.models = [form.elements.model.value];
    var status = $("generate-status");
    status.className = "";
    status.textContent = "Sending…";
    api("POST", "/generate/async", request).then(function (accepted) {
      follow(accepted.id);
    }).catch(function (e) { status.className = "error"; status.textContent = e.message; });
  }
  // Follows the request over its event stream (/api/v2/generate/stream/{id}), without polling:
  // `position` events update the status line, each `generation` event adds its image as it is
  // finished, and `end` closes the stream (else EventSource would reconnect).
  function follow(id) {
    var status = $("generate-status");
    var source = new EventSource("/api/v2/generate/stream/" + encodeURIComponent(id));
    source.addEventListener("position", function (message) {
      var c = JSON.parse(message.data);
      status.textContent = c.finished + " finished, " + c.processing + " being made, " + c.waiting +
        " waiting (queue position " + c.queue_position + ", about " + c.wait_time + " s).";
    });
    source.addEventListener("generation", function (message) { showImage(JSON.parse(message.data)); });
    source.addEventListener("end", function (message) {
      source.close();
      var end = JSON.parse(message.data);
      if (end.state === "done") {
        status.textContent = "Done: " + end.finished + " image(s).";
      } else {
        status.className = "error";
        status.textContent = end.state === "faulted" ? "The request faulted." :
          end.state === "cancelled" ? "The request was cancelled." : "The request is no longer kept.";
      }
      loadAccount();
    });
    source.addEventListener("error", function () {
      // EventSource retries by itself after a lost connection; CLOSED means it was refused.
      if (source.readyState === EventSource.CLOSED) {
        status.className = "error";
        status.textContent = "Lost the request's progress; its status is at /api/v2/generate/status/" + id;
      }
    });
  }
  function showImage(g) {
    var img = document.createElement("img");
    img.src = g.img.indexOf("/") >= 0 ? g.img : "data:image/webp;base64," + g.img;
    img.alt = "Image from " + g.worker_name + " (" + g.model + "), seed " + g.seed;
    $("generated").appendChild(img);
  }

  // ---- wiring -------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", function () {
    $("key-form").hidden = false;
    $("key-form").addEventListener("submit", function (event) {
      event.preventDefault();
      localStorage.setItem(KEY_ITEM, $("apikey").value.trim());
      $("apikey").value = "";
      loadAccount();
    });
    $("forget-key").addEventListener("click", function () {
      localStorage.removeItem(KEY_ITEM);
      me = null;
      $("account-view").hidden = true;
      $("forget-key").hidden = true;
    });
    $("generate-form").addEventListener("submit", generate);
    $("tier-form").addEventListener("submit", lookUpTier);
    $("rotate-key").addEventListener("click", rotateKey);
    $("sharedkey-form").addEventListener("submit", saveSharedKey);
    $("sk-cancel").addEventListener("click", resetSharedKeyForm);
    $("tier-apply").addEventListener("click", moveTier);
    if (localStorage.getItem(KEY_ITEM)) loadAccount();
  });
})();
