// Validates KEDA resources with @kubernetes-models/keda (npm, MIT): validators generated from
// KEDA's own CRD schemas (types, required fields, enums, formats). Reads a JSON list of
// documents on stdin, prints a JSON list of problems. Run by tests/test_deploy.py with
// .venv-deploy/node/node_modules as MODELS (make deploy-tools installs it).
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const models = process.env.MODELS;
const kinds = { ScaledObject: "ScaledObject", TriggerAuthentication: "TriggerAuthentication" };
const problems = [];
for (const doc of JSON.parse(readFileSync(0, "utf8"))) {
  if (doc.apiVersion !== "keda.sh/v1alpha1" || !(doc.kind in kinds)) {
    problems.push(`not a KEDA kind this checks: ${doc.apiVersion} ${doc.kind}`);
    continue;
  }
  const file = `${models}/@kubernetes-models/keda/keda.sh/v1alpha1/${kinds[doc.kind]}.js`;
  const cls = (await import(pathToFileURL(file).href))[kinds[doc.kind]];
  try {
    new cls(doc).validate();
  } catch (error) {
    problems.push(`${doc.kind} ${doc.metadata?.name}: ${error.message}`);
  }
}
console.log(JSON.stringify(problems));
