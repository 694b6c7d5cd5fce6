// Conduit: show a node's text output on the node after a run.
//
// Model Layers, Sensitivity Analysis and MLLM Plan report in text (the `text` list of their UI output, the
// payload V3's PreviewText sends too). The editor does not draw such text by itself, so this extension puts
// it in a read-only box at the bottom of the node. The box is not a node input: it is left out of saved
// workflows (their widget values stay the node's inputs, in order) and out of the prompt sent to the server.
import { app } from "../../../scripts/app.js";
import { ComfyWidgets } from "../../../scripts/widgets.js";

const WIDGET = "conduit_text";

function textBox(node) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) {
    widget = ComfyWidgets.STRING(node, WIDGET, ["STRING", { multiline: true }], app).widget;
    widget.serialize = false; // not saved into the workflow's widget values
    widget.options = { ...(widget.options || {}), serialize: false }; // not sent as a prompt input
    if (widget.inputEl) {
      widget.inputEl.readOnly = true;
      widget.inputEl.dataset.conduitText = "1";
      widget.inputEl.style.fontFamily = "monospace";
    }
  }
  return widget;
}

function showText(node, texts) {
  const widget = textBox(node);
  widget.value = (Array.isArray(texts) ? texts : [texts]).join("\n\n");
  const size = node.computeSize();
  node.setSize([Math.max(node.size[0], size[0], 420), Math.max(node.size[1], size[1])]);
  app.graph.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "conduit.textOutputs",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!String(nodeData.category || "").startsWith("conduit") || !nodeData.output_node) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.text) showText(this, message.text);
    };
    // older editors save every widget's value: keep the box's text out of the workflow there as well
    const onSerialize = nodeType.prototype.onSerialize;
    nodeType.prototype.onSerialize = function (o) {
      onSerialize?.apply(this, arguments);
      const at = this.widgets?.findIndex((w) => w.name === WIDGET) ?? -1;
      if (at >= 0 && Array.isArray(o.widgets_values)) o.widgets_values.length = Math.min(o.widgets_values.length, at);
    };
  },
});
