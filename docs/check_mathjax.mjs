// Typeset one built page of the docs site with MathJax 4, as a browser would, and report every
// formula MathJax refuses (e.g. "Erroneous nesting of equation structures").
//
//   sphinx-build -W -b html docs docs/_build/html
//   npm install mathjax@4      # in any folder; run node from that folder:
//   for f in /path/to/rnnsym/docs/_build/html/*.html; do
//     node /path/to/rnnsym/docs/check_mathjax.mjs "$f" || echo FAILED; done
//
// Exit status 1 if a formula fails or a math block is left untypeset.
import fs from 'fs';
import {createRequire} from 'module';

const MathJax = createRequire(process.cwd() + '/')('mathjax'); // from the current folder
const file = process.argv[2];
await MathJax.init({
  loader: {load: ['input/tex', 'output/svg', 'adaptors/liteDOM']},
  // what myst-parser configures on every page (window.MathJax in the built HTML)
  options: {processHtmlClass: 'tex2jax_process|mathjax_process|math|output_area'},
  startup: {typeset: false, document: fs.readFileSync(file, 'utf8')},
});
const doc = MathJax.startup.document;
await doc.renderPromise();
let errors = 0;
const items = Array.from(doc.math);
for (const item of items) {
  let bad = false;
  const visit = (node) => {
    if (node.isKind && node.isKind('merror')) bad = true;
    (node.childNodes || []).forEach(visit);
  };
  visit(item.root);
  if (bad) {
    errors++;
    console.log(`  refused: ${item.math.slice(0, 120).replace(/\n/g, ' ')}`);
  }
}
// a math block whose environment MathJax did not find keeps its TeX as text
const adaptor = MathJax.startup.adaptor;
const blocks = adaptor.tags(adaptor.body(doc.document), 'div')
  .filter((div) => /\bmath\b/.test(adaptor.getAttribute(div, 'class') || ''));
const left = blocks.filter((div) => adaptor.textContent(div).includes('\\begin{')).length;
console.log(`${file}: ${items.length} formulas, ${errors} refused, ${left} math blocks left as text`);
process.exit(errors || left ? 1 : 0);
