// Renders the API's OpenAPI spec with Redoc (django-ninja's copy, served by this site).
(function () {
  "use strict";
  const element = document.getElementById("redoc-ui");
  const settings = JSON.parse(document.getElementById("redoc-settings").textContent);
  window.Redoc.init(element.dataset.specUrl, settings, element);
})();
