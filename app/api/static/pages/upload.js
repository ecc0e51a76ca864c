// The upload form with a progress bar: the same multipart POST as without this script, sent
// with XMLHttpRequest so that its progress can be shown; then the job's page, as the server's
// redirect says.
"use strict";

(function () {
  const form = document.getElementById("upload");
  const bar = document.getElementById("progress");
  if (!form || !bar) {
    return;
  }
  const input = document.getElementById("files");
  const drop = form.querySelector(".drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    input.files = event.dataTransfer.files;
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const request = new XMLHttpRequest();
    request.open("POST", form.action);
    bar.hidden = false;
    request.upload.addEventListener("progress", (progress) => {
      if (progress.lengthComputable) {
        bar.value = Math.round((100 * progress.loaded) / progress.total);
      }
    });
    request.addEventListener("load", () => {
      if (request.status < 400) {
        window.location.assign(request.responseURL);
        return;
      }
      bar.hidden = true;
      let detail = "The upload was refused (" + request.status + ").";
      try {
        detail = JSON.parse(request.responseText).detail || detail;
      } catch (error) {
        // not a problem document: keep the status
      }
      const box = document.createElement("p");
      box.className = "problem";
      box.setAttribute("role", "alert");
      box.textContent = detail;
      form.querySelector(".problem")?.remove();
      form.prepend(box);
    });
    request.send(new FormData(form));
  });
})();
