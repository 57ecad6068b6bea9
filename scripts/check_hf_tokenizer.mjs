// Encodes a table of strings with a Hugging Face tokenizer.json in @huggingface/tokenizers (the
// JavaScript client; no ptrain code), so a test can compare the ids with `ptrain tokenize`.
// Usage: node check_hf_tokenizer.mjs PACKAGE_DIR HF_DIR STRINGS.json > IDS.json
//   PACKAGE_DIR: the installed @huggingface/tokenizers folder; HF_DIR: what export-hf wrote;
//   STRINGS.json: a JSON array of strings. Prints a JSON array: the ids of each string.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [pkg, hfDir, stringsFile] = process.argv.slice(2);
const { Tokenizer } = await import(pathToFileURL(join(pkg, "dist", "tokenizers.mjs")).href);
const tokenizerJson = JSON.parse(readFileSync(join(hfDir, "tokenizer.json"), "utf8"));
const tokenizerConfig = JSON.parse(readFileSync(join(hfDir, "tokenizer_config.json"), "utf8"));
const tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);
const strings = JSON.parse(readFileSync(stringsFile, "utf8"));
const out = strings.map((s) => tokenizer.encode(s, { add_special_tokens: false }).ids);
process.stdout.write(JSON.stringify(out) + "\n");
