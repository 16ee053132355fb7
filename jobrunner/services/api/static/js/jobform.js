// Reading the generated parameter form (templates/_job_form.html): the New job dialog and the
// batch dialog both use it, each on its own copy of the fields.

/** The parameters typed into the [data-param] fields under ``container``. */
export function collectParameters(container) {
  const parameters = {};
  for (const field of container.querySelectorAll("[data-param]")) {
    const name = field.dataset.param;
    switch (field.dataset.type) {
      case "bool":
        parameters[name] = field.querySelector("input").checked;
        break;
      case "multi_enum":
        parameters[name] = [...field.querySelectorAll("input:checked")].map((i) => i.value);
        break;
      case "enum": {
        const chosen = field.querySelector("input:checked");
        if (chosen) parameters[name] = chosen.value;
        break;
      }
      case "integer": {
        const raw = field.querySelector("input").value.trim();
        // Not a whole number: send it as typed and let the API say what is wrong.
        if (raw !== "") parameters[name] = /^-?\d+$/.test(raw) ? Number(raw) : raw;
        break;
      }
      default: {
        const raw = field.querySelector("input").value;
        if (raw !== "") parameters[name] = raw;
      }
    }
  }
  return parameters;
}
