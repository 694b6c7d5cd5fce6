// Helpers the editor tier evaluates in the page. They use only what both editors have (the 2024 built-in
// one and comfyui-frontend-package): the app object, its graph, LiteGraph and graphToPrompt.
(async () => {
  const app = window.app ?? (await import("/scripts/app.js")).app;
  const deadline = Date.now() + 60000;
  while (!(app.graph && window.LiteGraph && Object.keys(LiteGraph.registered_node_types).length > 50)) {
    if (Date.now() > deadline) throw new Error("the editor did not register its nodes");
    await new Promise((r) => setTimeout(r, 200));
  }
  const nodes = () => app.graph._nodes ?? app.graph.nodes;
  window.conduitTest = {
    ready: true,
    errors: [],
    dialogs() {
      return [...document.querySelectorAll(".p-dialog")].map((d) => d.innerText.slice(0, 200));
    },
    closeDialogs() {
      for (const b of document.querySelectorAll(".p-dialog .p-dialog-close-button, .p-dialog button[aria-label='Close']")) b.click();
      return document.querySelectorAll(".p-dialog").length;
    },
    nodeTypes() {
      return Object.fromEntries(Object.entries(LiteGraph.registered_node_types)
        .map(([id, t]) => [id, { category: t.category ?? t.nodeData?.category ?? "", title: t.title ?? "" }]));
    },
    async load(workflow) {
      this.errors = [];
      app.graph.clear();
      await app.loadGraphData(structuredClone(workflow));
      await new Promise((r) => setTimeout(r, 300));
      app.graph.setDirtyCanvas(true, true);
      return nodes().map((n) => ({
        id: n.id, type: n.type, known: Boolean(LiteGraph.registered_node_types[n.type]),
        pos: [...n.pos], size: [...n.size], min: [...n.computeSize()],
        widgets: (n.widgets ?? []).map((w) => w.name), title_height: LiteGraph.NODE_TITLE_HEIGHT,
      }));
    },
    async prompt() {
      const p = await app.graphToPrompt();
      return p.output;
    },
    async queue() {
      await app.queuePrompt(0, 1);
      return true;
    },
    node(id) {
      const n = app.graph.getNodeById(id);
      if (!n) return null;
      app.canvas.setDirty(true, true);
      app.canvas.draw(true, true); // the 2024 editor loads a node's images while drawing it
      const shown = (n.imgs ?? []).map((i) => i.src);
      const listed = (n.images ?? app.nodeOutputs?.[String(id)]?.images ?? []).map((i) => `/view?filename=${i.filename}`);
      return { widgets: (n.widgets ?? []).map((w) => [w.name, w.value]), size: [...n.size], imgs: shown,
               images: listed };
    },
    canvasCenter() {
      app.canvas.canvas.focus();
      const b = app.canvas.canvas.getBoundingClientRect();
      return [b.left + b.width / 2, b.top + b.height / 2];
    },
    searchResults() {
      // the 2024 editor's LiteGraph search box, or the current frontend's node search dialog
      const items = document.querySelectorAll(".litesearchbox .lite-search-item, .p-autocomplete-option");
      return [...items].map((e) => e.innerText.replace(/\u00a0/g, " ").trim()).filter((t) => t);
    },
    searchOpen() {
      return Boolean(document.querySelector(".litesearchbox, .comfy-vue-node-search-container"));
    },
    nodeCount(type) {
      return nodes().filter((n) => n.type === type).length;
    },
    fit() {
      const canvas = app.canvas;
      const all = nodes();
      if (!all.length) return;
      const xs = all.map((n) => n.pos[0]), ys = all.map((n) => n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT);
      const xe = all.map((n) => n.pos[0] + n.size[0]), ye = all.map((n) => n.pos[1] + n.size[1]);
      const [x0, y0, x1, y1] = [Math.min(...xs), Math.min(...ys), Math.max(...xe), Math.max(...ye)];
      const el = canvas.canvas;
      const scale = Math.min(el.width / (x1 - x0 + 80), el.height / (y1 - y0 + 80), 1.2);
      canvas.ds.scale = scale;
      canvas.ds.offset = [-x0 + 40 / scale, -y0 + 40 / scale];
      canvas.setDirty(true, true);
      canvas.draw(true, true);
    },
  };
})();
