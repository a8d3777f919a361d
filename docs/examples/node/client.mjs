// A medledger partner client written from docs/partners.md alone (Node.js 18+).
//
//   node client.mjs --client-id hospital-a-app --key .medledger/keys/hospital-a-app.jwk
//   node client.mjs assertion --client-id hospital-a-app --key .medledger/keys/hospital-a-app.jwk
//   node client.mjs token --client-id hospital-a-app --key ... --scope "ledger.read"
//
// The first form gets a token with an RFC 7523 client assertion, verifies the ledger's
// latest checkpoint (the log's signature and the witnesses' cosignatures) from the verifier
// keys, lists a patient's consents, and shows the rich errors of a call lacking a scope and
// of bad input. `assertion` prints a fresh client assertion alone and `token` an access token
// alone, for `buf curl` or grpcurl. Ports are the local stack's (`make up`); --host moves them.
import { createHash, createPrivateKey, createPublicKey, randomUUID, sign, verify } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const { values: options, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    "client-id": { type: "string", default: "hospital-a-app" },
    key: { type: "string", default: ".medledger/keys/hospital-a-app.jwk" },
    host: { type: "string", default: "127.0.0.1" },
    protos: { type: "string", default: join(dirname(fileURLToPath(import.meta.url)), "../../../protos") },
    patient: { type: "string", default: "patient-a-1" },
    scope: { type: "string", default: "ledger.read" },
    // The assertion's aud: the deployment's IDENTITY_TOKEN_ENDPOINT.
    "token-endpoint": { type: "string", default: "medledger://identity/token" },
  },
});
const ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

// --- 1. The client assertion: a compact JWS signed with the client's private JWK. ---------
const base64url = (bytes) => Buffer.from(bytes).toString("base64url");

function clientAssertion(clientId, jwk) {
  const key = createPrivateKey({ key: jwk, format: "jwk" });
  const [alg, digest, extra] = {
    OKP: ["EdDSA", null, {}], // Ed25519
    EC: ["ES256", "sha256", { dsaEncoding: "ieee-p1363" }], // P-256, JOSE's r || s
    RSA: ["RS256", "sha256", {}],
  }[jwk.kty];
  const header = { alg, typ: "JWT", ...(jwk.kid ? { kid: jwk.kid } : {}) };
  const now = Math.floor(Date.now() / 1000);
  const claims = {
    iss: clientId,
    sub: clientId,
    aud: options["token-endpoint"],
    iat: now,
    exp: now + 60,
    jti: randomUUID(), // good once
  };
  const input = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(claims))}`;
  const signature = sign(digest, Buffer.from(input), { key, ...extra });
  return `${input}.${base64url(signature)}`;
}

// --- 2. Stubs from the contracts in protos/, and a promise per unary call. ----------------
function loadApi() {
  const definition = protoLoader.loadSync(
    ["identity/v1/identity.proto", "ledger/v1/ledger.proto", "witness/v1/witness.proto"].map(
      (file) => `medledger/api/${file}`,
    ),
    { includeDirs: [options.protos], keepCase: true, longs: String, enums: String, defaults: true },
  );
  return grpc.loadPackageDefinition(definition).medledger.api;
}
const stub = (Service, port) => new Service(`${options.host}:${port}`, grpc.credentials.createInsecure());

function call(client, method, request, token) {
  const metadata = new grpc.Metadata();
  if (token) metadata.add("authorization", `Bearer ${token}`);
  return new Promise((resolve, reject) =>
    client[method](request, metadata, { deadline: Date.now() + 10_000 }, (error, reply) =>
      error ? reject(error) : resolve(reply),
    ),
  );
}

async function issueToken(identity, scope) {
  const jwk = JSON.parse(readFileSync(options.key, "utf8"));
  const reply = await call(identity, "IssueToken", {
    client_credentials: {
      client_assertion_type: ASSERTION_TYPE,
      client_assertion: clientAssertion(options["client-id"], jwk),
      scope,
    },
  });
  return reply.access_token;
}

// --- 3. grpc-status-details-bin: a google.rpc.Status whose details are Any messages. ------
const richErrors = protobuf.parse(`
  syntax = "proto3";
  package google.rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
  message BadRequest {
    message FieldViolation { string field = 1; string description = 2; }
    repeated FieldViolation field_violations = 1;
  }
  message Duration { int64 seconds = 1; int32 nanos = 2; }
  message RetryInfo { Duration retry_delay = 1; }
`, { keepCase: true }).root;

function statusDetails(error) {
  const [bytes] = error.metadata?.get("grpc-status-details-bin") ?? []; // grpc-js un-base64s -bin keys
  if (!bytes) return [];
  const status = richErrors.lookupType("google.rpc.Status").decode(bytes);
  return status.details.map(({ type_url, value }) => {
    const name = type_url.slice(type_url.lastIndexOf("/") + 1); // type.googleapis.com/google.rpc.X
    const type = richErrors.lookupType(name);
    return { type: name, ...type.toObject(type.decode(value), { longs: String }) };
  });
}

// --- 4. C2SP signed notes: vkeys, the log's signature and witness cosignatures. ----------
const SIG_ED25519 = 0x01;
const SIG_COSIGNATURE_V1 = 0x04;

function parseVkey(vkey) {
  // <name>+<key id hex>+<base64(type || public key)>: split on the first two '+' only, as
  // the base64 may hold '+' too.
  const first = vkey.indexOf("+");
  const second = vkey.indexOf("+", first + 1);
  if (first < 1 || second < 0) throw new Error(`not a vkey: ${vkey}`);
  const name = vkey.slice(0, first);
  const keyId = Buffer.from(vkey.slice(first + 1, second), "hex");
  const material = Buffer.from(vkey.slice(second + 1), "base64");
  const [type, publicKey] = [material[0], material.subarray(1)];
  const expected = createHash("sha256")
    .update(Buffer.concat([Buffer.from(`${name}\n`), Buffer.from([type]), publicKey]))
    .digest()
    .subarray(0, 4);
  if (!expected.equals(keyId) || publicKey.length !== 32) throw new Error(`bad vkey: ${vkey}`);
  const key = createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: base64url(publicKey) }, format: "jwk" });
  return { name, keyId, type, key };
}

function verifyNote(note, logVkey, witnessVkeys) {
  const split = note.lastIndexOf("\n\n");
  const text = note.slice(0, split + 1); // the signed text, final newline included
  const lines = note.slice(split + 2, -1).split("\n");
  const signatures = lines.map((line) => {
    const [name, encoded] = line.replace(/^\u2014 /, "").split(" "); // "— <name> <base64>"
    const bytes = Buffer.from(encoded, "base64");
    return { name, keyId: bytes.subarray(0, 4), signature: bytes.subarray(4) };
  });
  const by = (key) => signatures.find((s) => s.name === key.name && s.keyId.equals(key.keyId));
  const log = parseVkey(logVkey);
  const logSignature = by(log);
  if (log.type !== SIG_ED25519 || !logSignature || !verify(null, Buffer.from(text), log.key, logSignature.signature)) {
    throw new Error("the checkpoint is not signed by the log's key");
  }
  const cosigned = witnessVkeys.map(parseVkey).filter((witness) => {
    const found = by(witness);
    if (witness.type !== SIG_COSIGNATURE_V1 || !found) return false;
    const time = found.signature.readBigUInt64BE(0); // 8-byte timestamp || 64-byte Ed25519
    const message = `cosignature/v1\ntime ${time}\n${text}`;
    return verify(null, Buffer.from(message), witness.key, found.signature.subarray(8));
  });
  const [origin, size, root] = text.split("\n");
  return { origin, size: Number(size), root, cosignedBy: cosigned.map((w) => w.name) };
}

// --- The walk. -----------------------------------------------------------------------------
async function main() {
  if (positionals.length > 1 || !["assertion", "token", undefined].includes(positionals[0])) {
    throw new Error("usage: client.mjs [assertion | token] [--client-id ID] [--key FILE] [--scope S]");
  }
  if (positionals[0] === "assertion") {
    const jwk = JSON.parse(readFileSync(options.key, "utf8"));
    console.log(clientAssertion(options["client-id"], jwk));
    return;
  }
  const api = loadApi();
  const identity = stub(api.identity.v1.IdentityService, 50051);
  const ledger = stub(api.ledger.v1.LedgerService, 50053);
  if (positionals[0] === "token") {
    console.log(await issueToken(identity, options.scope));
    return;
  }
  const token = await issueToken(identity, "ledger.read system/Consent.rs");
  console.log("token: issued to", options["client-id"]);

  const { vkey } = await call(ledger, "GetVerifierKey", {}, token);
  const witnessVkeys = [];
  for (const port of [50055, 50056]) {
    const witness = stub(api.witness.v1.WitnessService, port);
    witnessVkeys.push((await call(witness, "GetWitnessInfo", {}, token)).vkey);
  }
  // Witnesses cosign each new checkpoint just after it is signed: wait a moment for them.
  let verified;
  for (let attempt = 0; attempt < 10; attempt += 1) {
    const { checkpoint } = await call(ledger, "GetCheckpoint", {}, token);
    verified = verifyNote(checkpoint.toString("utf8"), vkey, witnessVkeys);
    if (verified.cosignedBy.length === witnessVkeys.length) break;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  console.log("checkpoint verified:", verified);

  const { consents } = await call(identity, "ListConsents", { patient_id: options.patient, page_size: 10 }, token);
  console.log(`consents of ${options.patient}:`, consents.length);

  const ledgerOnly = await issueToken(identity, "ledger.read");
  for (const [client, method, request] of [
    [identity, "ListConsents", { patient_id: options.patient }], // lacks a Consent scope
    [ledger, "ListEntries", { page_size: -1 }], // bad input
  ]) {
    try {
      await call(client, method, request, ledgerOnly);
    } catch (error) {
      console.log(`${method}: ${grpc.status[error.code]} ${error.details}`);
      for (const detail of statusDetails(error)) console.log("  ", JSON.stringify(detail));
    }
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    const code = error.code !== undefined ? `${grpc.status[error.code]} ` : "";
    console.error(`failed: ${code}${error.details ?? error.message}`);
    for (const detail of statusDetails(error)) console.error("  ", JSON.stringify(detail));
    process.exit(1);
  },
);
