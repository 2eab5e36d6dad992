/* MozPool operator UI: live updates, API calls, edit in place, relative times.
 *
 * Pages are rendered by the daemon; this file only
 *  - follows /api/events (the page's <body data-events>) and refetches the parts of the page an
 *    event touches (elements with data-live, swapped by htmx), at most about once a second each,
 *    and prepends new log lines to a log list (data-log-tail);
 *  - sends every change to the JSON API (forms with class "api"), the same calls a script makes;
 *  - opens and closes the in-place editors, asks before destructive actions, shows each result;
 *  - keeps "3 min ago" texts current.
 */
(function () {
  'use strict';

  var LOG_LIMIT = 1000;
  var DEFAULT_THROTTLE = 1000;
  var RETRY_MAX = 30000;

  // --- relative times ------------------------------------------------------------------------

  /* The same words as mozpool/web/ui/html.py's relative(). */
  function relative(seconds) {
    var ahead = seconds < 0;
    var n = Math.floor(Math.abs(seconds));
    if (n < 10) return 'just now';
    var units = [[86400, 'd'], [3600, 'h'], [60, 'min'], [1, 's']];
    var amount = '';
    for (var i = 0; i < units.length; i++) {
      if (n >= units[i][0]) { amount = Math.floor(n / units[i][0]) + ' ' + units[i][1]; break; }
    }
    return ahead ? 'in ' + amount : amount + ' ago';
  }

  /* An estimate's words (data-approx): the same as html.py's approximate(). */
  function approximate(words) {
    if (words === 'just now') return 'any moment';
    if (words.indexOf('in ') === 0) return 'in ~' + words.slice(3);
    return 'overdue by ~' + words.slice(0, -' ago'.length);
  }

  function refreshTimes(root) {
    var now = Date.now();
    (root || document).querySelectorAll('time[datetime]').forEach(function (t) {
      var at = Date.parse(t.getAttribute('datetime'));
      if (isNaN(at)) return;
      var words = relative((now - at) / 1000);
      t.textContent = t.hasAttribute('data-approx') ? approximate(words) : words;
    });
  }

  // --- flash messages and results ------------------------------------------------------------

  function flash(kind, message, link) {
    var area = document.getElementById('flash');
    if (!area) return;
    var p = document.createElement('p');
    p.className = 'flash-' + kind;
    p.setAttribute('data-testid', 'flash-' + kind);
    p.setAttribute('role', kind === 'error' ? 'alert' : 'status');
    var mark = document.createElement('span');
    mark.className = 'mark';
    mark.setAttribute('aria-hidden', 'true');
    mark.textContent = kind === 'error' ? '✖ ' : '✓ ';
    p.appendChild(mark);
    p.appendChild(document.createTextNode(message));
    if (link) {
      p.appendChild(document.createTextNode(' '));
      var a = document.createElement('a');
      a.href = link.href;
      a.textContent = link.text;
      p.appendChild(a);
    }
    var close = document.createElement('button');
    close.type = 'button';
    close.className = 'close';
    close.setAttribute('aria-label', 'dismiss');
    close.setAttribute('data-testid', 'flash-dismiss');
    close.addEventListener('click', function () { p.remove(); });
    p.appendChild(close);
    area.prepend(p);
    while (area.children.length > 3) area.lastElementChild.remove();
    if (kind !== 'error') setTimeout(function () { p.remove(); }, 8000);
  }

  function showResult(form, kind, message) {
    var out = form.querySelector('output.result');
    if (out) {
      out.textContent = (kind === 'error' ? '✖ ' : '✓ ') + message;
      out.className = 'result result-' + kind;
      out.setAttribute('data-result', kind);
    }
  }

  // --- confirmation --------------------------------------------------------------------------

  function confirmAction(message) {
    var dialog = document.getElementById('confirm-dialog');
    if (!dialog || typeof dialog.showModal !== 'function') return Promise.resolve(window.confirm(message));
    document.getElementById('confirm-message').textContent = message;
    dialog.returnValue = '';
    return new Promise(function (resolve) {
      dialog.addEventListener('close', function () { resolve(dialog.returnValue === 'ok'); }, { once: true });
      dialog.showModal();
    });
  }

  // --- calling the API -----------------------------------------------------------------------

  function ApiError(status, message, data) {
    this.status = status;
    this.message = message;
    this.data = data;
  }

  function cookie(name) {
    var found = document.cookie.split('; ').filter(function (c) { return c.indexOf(name + '=') === 0; })[0];
    return found ? decodeURIComponent(found.slice(name.length + 1)) : '';
  }

  /* One API call.  A call the API redirects (302: another server owns the object) is repeated,
   * same method and body, at the owning server, as the API asks (spec http-api 2.3); fetch
   * cannot follow a redirected POST with its body, so the redirect is taken manually. */
  function callApi(method, path, body, ownerUrl) {
    var init = { method: method, redirect: 'manual', headers: { 'Accept': 'application/json' } };
    if (method !== 'GET') {
      init.body = JSON.stringify(body || {});
      init.headers['Content-Type'] = 'application/json';
      var csrf = cookie('mozpool_csrf');
      if (csrf) init.headers['X-CSRF-Token'] = csrf;  // a signed-in browser echoes it on changes
    }
    return fetch(path, init).then(function (response) {
      if (response.type !== 'opaqueredirect') return response;
      if (!ownerUrl || ownerUrl === location.origin) {
        throw new ApiError(0, 'the server redirected this call, and the owner is unknown', null);
      }
      init.mode = 'cors';
      init.redirect = 'error';
      return fetch(ownerUrl + path, init).catch(function () {
        throw new ApiError(0, ownerUrl + ' owns this and could not be reached from this page', { owner: ownerUrl });
      });
    }, function () {
      throw new ApiError(0, 'the server could not be reached', null);
    }).then(function (response) {
      return response.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!response.ok) {
          var why = (data && data.error) || response.statusText || 'failed';
          throw new ApiError(response.status, why, data);
        }
        return data;
      });
    });
  }

  /* The JSON body of an API form: its named fields, minus those used in the path.  Empty fields
   * are left out (data-empty="null": sent as null); data-type="int" sends a number and
   * data-type="merge-json" merges a JSON object's keys into the body. */
  function formBody(form, used) {
    var body = {};
    for (var i = 0; i < form.elements.length; i++) {
      var el = form.elements[i];
      if (!el.name || used[el.name] || el.disabled) continue;
      var value = el.value;
      var type = el.getAttribute('data-type');
      if (value.trim() === '') {
        if (el.getAttribute('data-empty') === 'null') body[el.name] = null;
        continue;
      }
      if (type === 'int') {
        body[el.name] = Number(value);
      } else if (type === 'merge-json') {
        var parsed;
        try { parsed = JSON.parse(value); } catch (e) { throw new ApiError(0, el.name + ' is not valid JSON', null); }
        if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
          throw new ApiError(0, el.name + ' must be a JSON object', null);
        }
        Object.keys(parsed).forEach(function (k) { body[k] = parsed[k]; });
      } else {
        body[el.name] = value;
      }
    }
    return body;
  }

  function formPath(form, used) {
    return form.getAttribute('data-api-path').replace(/\{(\w+)\}/g, function (m, name) {
      used[name] = true;
      return encodeURIComponent(form.elements[name].value.trim());
    });
  }

  var RESULTS = {
    ping: function (data) { return data && data.success ? 'ping: the device answered' : 'ping: no answer'; },
    success: function (data) { return data && data.success ? 'it answered' : 'no answer'; }
  };

  var AFTER = {
    'close-editor': function (form) { closeEditor(form, true); },
    'open-request': function (form, data) {
      if (data && data.request) location.assign('/ui/request/' + data.request.id);
    }
  };

  function submitApiForm(form) {
    var used = {};
    var method = form.getAttribute('data-api-method');
    var button = form.querySelector('button[type=submit]');
    var label = button ? button.textContent.trim() : 'Done';
    var path, body;
    try {
      path = formPath(form, used);
      body = formBody(form, used);
    } catch (err) {
      showResult(form, 'error', err.message);
      flash('error', label + ': ' + err.message);
      return;
    }
    var question = form.getAttribute('data-confirm');
    var asked = question ? confirmAction(question) : Promise.resolve(true);
    asked.then(function (yes) {
      if (!yes) { showResult(form, 'error', 'cancelled'); return; }
      if (button) button.disabled = true;
      showResult(form, 'ok', 'sending…');
      return callApi(method, path, body, form.getAttribute('data-owner-url')).then(function (data) {
        var format = RESULTS[form.getAttribute('data-result')];
        var message = format ? format(data) : form.getAttribute('data-done') || label + ': done';
        showResult(form, 'ok', message);
        flash('ok', message);
        var after = AFTER[form.getAttribute('data-after')];
        if (after) after(form, data);
        refreshAll();
      }, function (err) {
        var message = (err.status ? err.status + ' ' : '') + err.message;
        showResult(form, 'error', message);
        var link = null;
        if (err.data && err.data.request && err.data.request.id) {
          link = { href: '/ui/request/' + err.data.request.id, text: 'request ' + err.data.request.id };
        } else if (err.data && err.data.owner) {
          link = { href: err.data.owner + location.pathname, text: 'open this page on ' + err.data.owner };
        }
        flash('error', label + ' failed: ' + message, link);
      }).then(function () { if (button) button.disabled = false; });
    });
  }

  // --- edit in place -------------------------------------------------------------------------

  function openEditor(button) {
    var form = document.getElementById(button.getAttribute('data-edit'));
    if (!form) return;
    form.hidden = false;
    form.setAttribute('data-editing', '1');
    button.hidden = true;
    var first = form.querySelector('textarea, input, select');
    if (first) first.focus();
  }

  function closeEditor(form, saved) {
    form.hidden = true;
    form.removeAttribute('data-editing');
    if (!saved) form.reset();
    var button = document.querySelector('[data-edit="' + form.id + '"]');
    if (button) { button.hidden = false; button.focus(); }
    var region = form.closest('[data-live]');
    if (region) refresh(region.id);
  }

  // --- live updates --------------------------------------------------------------------------

  var throttles = {};
  var waiting = {};

  /* Refetch a live region now, or as soon as its throttle allows (one trailing refetch
   * collects every event that came meanwhile). */
  function schedule(id, wait) {
    var t = throttles[id] || (throttles[id] = { last: 0, timer: null });
    if (t.timer) return;
    var delay = Math.max(0, t.last + wait - Date.now());
    t.timer = setTimeout(function () {
      t.timer = null;
      t.last = Date.now();
      refresh(id);
    }, delay);
  }

  function refresh(id) {
    var region = document.getElementById(id);
    if (!region || !window.htmx) return;
    if (document.hidden || region.querySelector('[data-editing]')) {
      waiting[id] = true;  // done when the tab is shown again or the editor closes
      return;
    }
    delete waiting[id];
    window.htmx.trigger(region, 'mp-refresh');
  }

  function refreshAll() {
    document.querySelectorAll('[data-live]').forEach(function (region) { schedule(region.id, 0); });
  }

  /* Whether an event touches a region: the region's own device or request (data-live-device,
   * data-live-request), or one it shows (data-live-contains: a [data-device] or [data-request]
   * inside it), or, without those, any. */
  function concerns(region, data) {
    var device = region.getAttribute('data-live-device');
    var request = region.getAttribute('data-live-request');
    if (device && data.device !== device) return false;
    if (request && String(data.request) !== request) return false;
    if (region.hasAttribute('data-live-contains')) {
      /* a power controller's own health (board_health events name its address) */
      if (data.fqdn && region.getAttribute('data-board') === data.fqdn) return true;
      var shown = [];
      if (data.device) shown.push('[data-device="' + CSS.escape(data.device) + '"]');
      if (data.request != null) shown.push('[data-request="' + CSS.escape(String(data.request)) + '"]');
      return shown.length > 0 && region.querySelector(shown.join(',')) !== null;
    }
    return true;
  }

  function onEvent(type, data) {
    document.querySelectorAll('[data-live]').forEach(function (region) {
      var types = region.getAttribute('data-live').split(' ');
      if (types.indexOf(type) >= 0 && concerns(region, data)) {
        schedule(region.id, Number(region.getAttribute('data-live-throttle')) || DEFAULT_THROTTLE);
      }
    });
    document.querySelectorAll('[data-log-tail="' + type + '"]').forEach(function (list) {
      var owner = list.getAttribute('data-log-owner');
      var mine = type === 'device_log' ? data.device : String(data.request);
      if (!owner || owner === mine) prependLogLine(list, data);
    });
  }

  function prependLogLine(list, data) {
    var id = Number(data.id);
    if (list.querySelector('[data-log-id="' + id + '"]')) return;
    var li = document.createElement('li');
    li.setAttribute('data-testid', 'log-line');
    li.setAttribute('data-log-id', String(id));
    li.className = 'new';
    var time = document.createElement('time');
    time.setAttribute('datetime', data.timestamp + 'Z');
    time.title = data.timestamp.replace('T', ' ') + ' UTC';
    var source = document.createElement('span');
    source.className = 'source';
    source.textContent = data.source;
    var message = document.createElement('span');
    message.className = 'message';
    message.textContent = data.message;
    li.append(time, ' ', source, ' ', message);
    refreshTimes(li);
    var before = list.firstElementChild;
    while (before && Number(before.getAttribute('data-log-id')) > id) before = before.nextElementSibling;
    list.insertBefore(li, before);
    while (list.children.length > LOG_LIMIT) list.lastElementChild.remove();
  }

  function reloadLogs() {
    document.querySelectorAll('[data-log-url]').forEach(function (list) {
      window.htmx.ajax('GET', list.getAttribute('data-log-url'), { target: list, swap: 'outerHTML', select: '#' + list.id });
    });
  }

  var EVENT_TYPES = ['device_state', 'request_state', 'request_device', 'device_log', 'request_log',
    'device_comments', 'device_environment'];

  function setLive(state, text) {
    var badge = document.getElementById('live-status');
    if (!badge) return;
    badge.setAttribute('data-state', state);
    badge.textContent = text;
  }

  /* Follow the page's event stream; the browser resumes after a dropped connection with
   * Last-Event-ID, and after a refused one we start again (resuming by ?last_event_id=). */
  function follow(url) {
    var lastId = null;
    var delay = 1000;
    var source = null;
    var lost = false;

    function connect() {
      var target = url;
      if (lastId) target += (url.indexOf('?') >= 0 ? '&' : '?') + 'last_event_id=' + encodeURIComponent(lastId);
      source = new EventSource(target);
      setLive('connecting', '◌ connecting…');
      source.onopen = function () {
        setLive('live', '● live');
        delay = 1000;
        if (lost) { refreshAll(); lost = false; }
      };
      source.onerror = function () {
        lost = true;
        if (source.readyState === EventSource.CLOSED) {
          setLive('off', '○ not live — retrying');
          setTimeout(connect, delay);
          delay = Math.min(delay * 2, RETRY_MAX);
        } else {
          setLive('reconnecting', '◌ reconnecting…');
        }
      };
      EVENT_TYPES.forEach(function (type) {
        source.addEventListener(type, function (e) {
          if (e.lastEventId) lastId = e.lastEventId;
          var data;
          try { data = JSON.parse(e.data); } catch (err) { return; }
          onEvent(type, data);
        });
      });
      source.addEventListener('reset', function (e) {
        if (e.lastEventId) lastId = e.lastEventId;
        refreshAll();
        reloadLogs();
      });
    }
    connect();
    window.addEventListener('pagehide', function () { if (source) source.close(); });
  }

  // --- wiring --------------------------------------------------------------------------------

  /* The forced state change starts from the state shown, until the operator types another. */
  function followShownState() {
    document.querySelectorAll('[data-follow-state]').forEach(function (input) {
      if (input.getAttribute('data-dirty') || document.activeElement === input) return;
      var region = document.getElementById(input.getAttribute('data-follow-state'));
      var shown = region && region.querySelector('[data-testid="device-state"]');
      if (shown) input.value = shown.getAttribute('data-state');
    });
  }

  document.addEventListener('submit', function (e) {
    var form = e.target.closest('form.api');
    if (!form) return;
    e.preventDefault();
    submitApiForm(form);
  });

  document.addEventListener('click', function (e) {
    var edit = e.target.closest('[data-edit]');
    if (edit) { openEditor(edit); return; }
    var cancel = e.target.closest('[data-edit-cancel]');
    if (cancel) closeEditor(cancel.closest('form'), false);
  });

  document.addEventListener('keydown', function (e) {
    if (e.key !== 'Escape') return;
    var form = e.target.closest && e.target.closest('form[data-editing]');
    if (form) closeEditor(form, false);
  });

  document.addEventListener('input', function (e) {
    if (e.target.hasAttribute && e.target.hasAttribute('data-follow-state')) e.target.setAttribute('data-dirty', '1');
  });

  // --- who is signed in, and what they may do ----------------------------------------------

  var RANKS = { reader: 1, user: 2, operator: 3, admin: 4 };
  var myRank = null;  // unknown until /api/whoami/ answers: nothing is hidden before

  /* Actions the caller's role may not take are hidden (the API would refuse them anyway).  An
     attribute of its own, so an editor's own open/closed state (``hidden``) is left alone. */
  function applyRole(root) {
    if (myRank === null) return;
    (root || document).querySelectorAll('[data-needs]').forEach(function (el) {
      el.toggleAttribute('data-not-allowed', myRank < (RANKS[el.getAttribute('data-needs')] || RANKS.operator));
    });
  }

  function showWho(me) {
    var who = document.getElementById('who');
    myRank = RANKS[me.role] || 0;
    applyRole();
    if (!who) return;
    who.textContent = '';
    who.setAttribute('data-role', me.role || '');
    who.setAttribute('data-mode', me.mode);
    if (me.kind === 'token') {
      var name = document.createElement('span');
      name.textContent = me.name + ' (' + me.role + ')';
      name.setAttribute('data-testid', 'who-name');
      var out = document.createElement('form');
      out.method = 'post';
      out.action = '/ui/signout';
      out.className = 'signout';
      var button = document.createElement('button');
      button.type = 'submit';
      button.textContent = 'Sign out';
      button.setAttribute('data-testid', 'signout');
      out.appendChild(button);
      who.appendChild(name);
      who.appendChild(out);
      return;
    }
    var link = document.createElement('a');
    link.href = '/ui/signin?next=' + encodeURIComponent(location.pathname + location.search);
    link.textContent = me.mode === 'open' ? 'Sign in (auth open)' : 'Sign in (read only)';
    link.id = 'signin-link';
    link.setAttribute('data-testid', 'signin-link');
    who.appendChild(link);
  }

  function loadWho() {
    fetch('/api/whoami/', { credentials: 'same-origin', headers: { Accept: 'application/json' } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (me) { if (me) showWho(me); })
      .catch(function () { /* the page still works; actions stay as rendered */ });
  }

  document.addEventListener('htmx:afterSettle', function (e) { followShownState(); applyRole(e.target); });

  document.addEventListener('visibilitychange', function () {
    if (document.hidden) return;
    Object.keys(waiting).forEach(function (id) { schedule(id, 0); });
  });

  function start() {
    loadWho();
    refreshTimes();
    setInterval(refreshTimes, 15000);
    var url = document.body.getAttribute('data-events');
    if (url && window.EventSource) follow(url);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
