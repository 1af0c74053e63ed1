"""The page raters see: two clips side by side, one question, three buttons.

One static page per study; its script asks the server for the rater's next trial
(`next?rater=ID`), shows it, and posts the vote (`vote`). It holds nothing about the
arms: the server's answers carry only media names, the caption and a token. The clips
do not use the `loop` attribute: when both have ended they are restarted together, so
the two sides never drift apart. The buttons are enabled only once both clips play.
Keys 1, 2, 3 vote too (left, right, can't tell).
"""

from __future__ import annotations

import html
import json
from typing import Any

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .3em; }
#instructions { color: #555; margin: 0 0 1em; }
#question { font-size: 1.25em; font-weight: 600; margin: .6em 0; }
#caption { font-style: italic; margin: .3em 0 .8em; min-height: 1.2em; }
#clips { display: flex; gap: 24px; justify-content: center; }
.side { text-align: center; }
.side video { width: 384px; image-rendering: pixelated; background: #000; display: block; }
.side video.motion { width: 192px; margin: 6px auto 0; }
.label { font-weight: 600; margin: .3em 0; }
#buttons { display: flex; gap: 16px; justify-content: center; margin: 1.2em 0; }
#buttons button { font-size: 1.15em; padding: .55em 2.2em; border-radius: 6px; cursor: pointer; }
#buttons button:disabled { cursor: default; opacity: .45; }
#progress, #status { text-align: center; color: #555; }
#status.error { color: #b00020; }
#join input { font-size: 1.1em; padding: .3em; }
"""

_SCRIPT = """
const STUDY = JSON.parse(document.getElementById('study').textContent);
const params = new URLSearchParams(location.search);
const rater = params.get('rater');
const $ = (id) => document.getElementById(id);
let trial = null, token = null, shownAt = null, busy = false;

function setStatus(text, isError) {
  $('status').textContent = text || '';
  $('status').className = isError ? 'error' : '';
}
function videos() {
  return Array.from(document.querySelectorAll('#clips video')).filter(v => v.style.display !== 'none');
}
function setButtons(enabled) {
  for (const b of document.querySelectorAll('#buttons button')) b.disabled = !enabled;
}
function playTogether() {
  const vs = videos();
  for (const v of vs) { v.pause(); v.currentTime = 0; }
  return Promise.all(vs.map(v => v.play()));
}
function onEnded() {
  if (videos().every(v => v.ended)) playTogether();
}
function whenReady(v) {
  return new Promise((resolve, reject) => {
    if (v.readyState >= 3) return resolve();
    v.addEventListener('canplay', resolve, {once: true});
    v.addEventListener('error', () => reject(new Error('a clip failed to load')), {once: true});
  });
}
async function show(data) {
  trial = data.trial; token = data.token;
  document.body.dataset.state = 'loading';
  setButtons(false);
  $('progress').textContent = `Trial ${data.position} of ${data.total}`;
  $('caption').textContent = STUDY.show_captions && trial.caption ? `Prompt: ${trial.caption}` : '';
  for (const side of ['left', 'right']) {
    const media = trial[side];
    $(side + '_video').src = 'media/' + media.video;
    const motion = $(side + '_motion');
    if (media.motion) { motion.src = 'media/' + media.motion; motion.style.display = ''; }
    else { motion.removeAttribute('src'); motion.style.display = 'none'; }
  }
  try {
    await Promise.all(videos().map(whenReady));
    await playTogether();
  } catch (e) {
    setStatus('Could not play the clips: ' + e.message + '. Reload the page to retry.', true);
    return;
  }
  shownAt = performance.now();
  setButtons(true);
  document.body.dataset.trial = trial.id;
  document.body.dataset.state = 'ready';
}
async function next() {
  setStatus('');
  const response = await fetch('next?rater=' + encodeURIComponent(rater));
  const data = await response.json();
  if (!response.ok) { setStatus(data.error, true); return; }
  if (data.done) {
    $('trial').style.display = 'none';
    $('progress').textContent = `All ${data.total} trials done. Thank you!`;
    document.body.dataset.state = 'done';
    return;
  }
  await show(data);
}
async function vote(choice) {
  if (busy || !trial || $('left').disabled) return;
  busy = true; setButtons(false);
  const body = {rater: rater, trial: trial.id, token: token, choice: choice,
                client_ms: Math.round(performance.now() - shownAt)};
  try {
    const response = await fetch('vote', {method: 'POST', body: JSON.stringify(body),
                                          headers: {'Content-Type': 'application/json'}});
    const data = await response.json();
    if (!response.ok && response.status !== 409) {   // 409: already recorded; go on
      setStatus(data.error, true); setButtons(true); return;
    }
    await next();
  } catch (e) {
    setStatus('The server did not answer (' + e.message + '); your vote was not recorded. ' +
              'Try again in a moment.', true);
    setButtons(true);
  } finally { busy = false; }
}
if (!rater) {
  $('trial').style.display = 'none';
  $('join').style.display = '';
} else {
  for (const v of document.querySelectorAll('#clips video')) v.addEventListener('ended', onEnded);
  $('left').onclick = () => vote('left');
  $('right').onclick = () => vote('right');
  $('tie').onclick = () => vote('tie');
  document.addEventListener('keydown', (e) => {
    const choice = {'1': 'left', '2': 'right', '3': 'tie'}[e.key];
    if (choice) vote(choice);
  });
  next();
}
"""


def render(public: dict[str, Any]) -> str:
  """The study page, from study.json's public fields (the trials are fetched one by one)."""
  settings = {k: public[k] for k in ("study_id", "show_captions", "show_motion")}
  labels = {k: html.escape(v) for k, v in public["choices"].items()}
  esc = html.escape

  def side(name: str, label: str) -> str:
    return (f'<div class="side"><div class="label">{label}</div>'
            f'<video id="{name}_video" muted playsinline preload="auto"></video>'
            f'<video id="{name}_motion" class="motion" muted playsinline preload="auto" '
            'style="display:none"></video></div>')

  # json.dumps cannot close the script element: "</" is escaped.
  settings_json = json.dumps(settings).replace("</", "<\\/")
  return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(public["title"])}</title><style>{_STYLE}</style></head>
<body data-state="start">
<h1>{esc(public["title"])}</h1>
<p id="instructions">{esc(public["instructions"])}</p>
<form id="join" style="display:none" method="get">
  <p>Enter a name or id for yourself (letters, digits, - and _), then start.</p>
  <input name="rater" pattern="[A-Za-z0-9_-]{{1,64}}" required autofocus>
  <button type="submit">Start</button>
</form>
<div id="trial">
  <div id="question">{esc(public["question"])}</div>
  <div id="caption"></div>
  <div id="clips">{side("left", labels["left"])}{side("right", labels["right"])}</div>
  <div id="buttons">
    <button id="left" disabled>{labels["left"]}</button>
    <button id="tie" disabled>{labels["tie"]}</button>
    <button id="right" disabled>{labels["right"]}</button>
  </div>
</div>
<div id="progress"></div>
<div id="status"></div>
<script id="study" type="application/json">{settings_json}</script>
<script>{_SCRIPT}</script>
</body></html>
"""
