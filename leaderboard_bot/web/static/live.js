// Live standings: one Server-Sent Events stream (/events); each event is the whole state, so the
// page redraws the shown tab from it. Text only (textContent), never HTML from the data.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  var period = live.getAttribute("data-period");
  var version = Number(live.getAttribute("data-version") || 0);
  var changed = document.getElementById("changed");

  function showTime(seconds) {
    var when = new Date(seconds * 1000);
    changed.setAttribute("datetime", when.toISOString());
    changed.textContent = when.toLocaleString();
  }
  if (changed && changed.getAttribute("datetime")) {
    showTime(Date.parse(changed.getAttribute("datetime")) / 1000);
  }

  function line(entry) {
    var li = document.createElement("li");
    var rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = "#" + entry.rank;
    var name = document.createElement("a");
    name.className = "name";
    name.href = "/member/" + encodeURIComponent(entry.member);
    name.textContent = entry.name;
    var value = document.createElement("span");
    value.className = "value";
    value.textContent = entry.value;
    li.append(rank, " ", name, " ", value);
    return li;
  }

  function apply(state) {
    if (state.version <= version) return;
    version = state.version;
    var tab = state.tabs[period];
    if (!tab) return;
    document.querySelectorAll("ol[data-board]").forEach(function (list) {
      var lines = tab[list.getAttribute("data-board")] || [];
      list.replaceChildren.apply(list, lines.map(line));
      var empty = list.parentElement.querySelector(".empty");
      if (empty) empty.hidden = lines.length > 0;
    });
    if (changed) showTime(state.changed_at);
    document.body.setAttribute("data-version", String(version));
  }

  var source = new EventSource("/events");
  source.addEventListener("standings", function (event) {
    try { apply(JSON.parse(event.data)); } catch (e) { /* a broken event: wait for the next */ }
  });
  source.onopen = function () { live.textContent = "Live"; document.body.setAttribute("data-live", "1"); };
  source.onerror = function () { live.textContent = "Reconnecting…"; };
})();
