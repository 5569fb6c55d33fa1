/* A Worker for pages opened from file://, where the browser refuses real workers. The search of the site
 * runs in a worker; on file:// this runs the worker's script in a hidden same-page iframe instead, so the
 * search works from a plain folder, offline. Local replacement of the "iframe-worker" shim that the Material
 * offline plugin would otherwise load from a CDN (the site loads nothing from outside itself). */
(function () {
  "use strict";
  if (location.protocol !== "file:" || typeof EventTarget === "undefined") return;

  class IframeWorker extends EventTarget {
    constructor(url) {
      super();
      this.onmessage = null;
      this.onerror = null;
      const frame = document.createElement("iframe");
      frame.hidden = true;
      frame.setAttribute("aria-hidden", "true");
      (document.body || document.documentElement).appendChild(frame);
      this._frame = frame;
      const scope = frame.contentWindow;
      const self_ = this;
      scope.postMessage = function (data) {  // the worker's postMessage(data) -> this worker's "message"
        const ev = new MessageEvent("message", { data: data });
        self_.dispatchEvent(ev);
        if (typeof self_.onmessage === "function") self_.onmessage(ev);
      };
      scope.importScripts = function () {
        throw new Error("importScripts is not available to a worker on a file:// page");
      };
      this._ready = new Promise(function (resolve, reject) {
        const script = scope.document.createElement("script");
        script.src = new URL(String(url), location.href).href;
        script.onload = function () { resolve(scope); };
        script.onerror = function (err) {
          const ev = new ErrorEvent("error", { message: "cannot load worker script " + script.src });
          self_.dispatchEvent(ev);
          if (typeof self_.onerror === "function") self_.onerror(ev);
          reject(err);
        };
        scope.document.head.appendChild(script);
      });
    }

    postMessage(data) {  // this worker's postMessage(data) -> the worker script's "message"
      this._ready.then(function (scope) {
        scope.dispatchEvent(new MessageEvent("message", { data: data }));
      }, function () {});
    }

    terminate() {
      this._frame.remove();
    }
  }

  window.Worker = IframeWorker;
})();
