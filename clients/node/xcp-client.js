#!/usr/bin/env node
// A Node.js client of the xcp master: proof that any language can use the
// API from the .proto files alone, errors included.
//
// It loads ../../protos with @grpc/proto-loader, calls the master with
// @grpc/grpc-js, and reads an error's reason (HOST_OFFLINE, ...) and
// parameters from the google.rpc.ErrorInfo inside the google.rpc.Status that
// the master sends in the `grpc-status-details-bin` trailer. Status and
// ErrorInfo are decoded with protobufjs from the .proto files that ship with
// the Python package googleapis-common-protos (found with the project's
// Python, or given with --google-protos DIR / $XCP_GOOGLE_PROTOS).
//
//   node xcp-client.js list-hosts
//   node xcp-client.js create-vm web1 --memory 1073741824
//   node xcp-client.js start-vm web1 [--host host2]
//   node xcp-client.js shutdown-vm web1 [--force]
//
// VMs and hosts are named by uuid or by name_label.
//
// A secure pool (./scripts/pool's default): --tls-dir DIR (or $XCP_TLS_DIR)
// holds the pool's certificates; the client speaks mutual TLS with
// DIR/client-NAME.pem and its key, NAME from --identity (or $XCP_IDENTITY,
// default admin), checks that the master's certificate names `master.xcp`
// (whatever address it dials), and sends --auth-token (or $XCP_TOKEN) as
// `authorization: Bearer <token>` when given. No TLS directory: plaintext.
// --ca-cert FILE (or $XCP_CA_CERT) instead: TLS checked against that CA,
// presenting no certificate, for the master's token endpoint, where the
// bearer token alone names the caller.
//
// Results are JSON on stdout (proto field names). Errors: one line on stderr,
// `error: HOST_OFFLINE host=<uuid>`, and the exit codes of the `xcp` CLI:
// 0 ok, 1 other API error, 2 usage, 3 host unreachable (HOST_OFFLINE or
// CANNOT_CONTACT_HOST), 4 the master cannot be reached.
'use strict';

const path = require('path');
const fs = require('fs');
const { execFileSync } = require('child_process');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const EXIT = { OK: 0, API_ERROR: 1, USAGE: 2, HOST_UNREACHABLE: 3, MASTER_UNREACHABLE: 4 };
const HOST_UNREACHABLE = new Set(['HOST_OFFLINE', 'CANNOT_CONTACT_HOST']);
const DOMAIN = 'xcp.v1';
const ERROR_INFO_TYPE = 'type.googleapis.com/google.rpc.ErrorInfo';
const MASTER_NAME = 'master.xcp'; // the name in the master's certificate (xcp_control/pki.py)

const USAGE = `usage: node xcp-client.js [--master HOST:PORT[,HOST:PORT...]] [--timeout S] [--protos DIR]
                         [--google-protos DIR] [--tls-dir DIR] [--identity NAME]
                         [--auth-token TOKEN] [--ca-cert FILE] COMMAND [ARGS]
commands:
  list-hosts                              every host with its metrics
  get-vm VM                               one VM
  create-vm NAME [--memory BYTES] [--vcpus N]
  start-vm VM [--host HOST] [--paused]
  shutdown-vm VM [--force]
  disable-host HOST | enable-host HOST
--master defaults to $XCP_MASTER, else 127.0.0.1:7000 (several masters: all of
them, comma-separated; one that is down is skipped); --timeout to 30 s.
--tls-dir defaults to $XCP_TLS_DIR (none: plaintext); --identity to $XCP_IDENTITY,
else admin (DIR/client-NAME.pem); --auth-token to $XCP_TOKEN; --ca-cert (TLS
with no client certificate: the token endpoint; overrides --tls-dir) to $XCP_CA_CERT.`;

class UsageError extends Error {}
class NameError extends Error {}

function parseArgs(argv) {
  const opts = {
    master: process.env.XCP_MASTER || '127.0.0.1:7000',
    timeout: 30,
    protos: path.resolve(__dirname, '..', '..', 'protos'),
    googleProtos: process.env.XCP_GOOGLE_PROTOS || '',
    tlsDir: process.env.XCP_TLS_DIR || '',
    identity: process.env.XCP_IDENTITY || 'admin',
    authToken: process.env.XCP_TOKEN || '',
    caCert: process.env.XCP_CA_CERT || '',
    memory: String(1024 ** 3),
    vcpus: '1',
    host: '',
    paused: false,
    force: false,
  };
  const positional = [];
  const valued = { '--master': 'master', '--timeout': 'timeout', '--protos': 'protos',
    '--google-protos': 'googleProtos', '--memory': 'memory', '--vcpus': 'vcpus',
    '--host': 'host', '--tls-dir': 'tlsDir', '--identity': 'identity',
    '--auth-token': 'authToken', '--ca-cert': 'caCert' };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '-h' || arg === '--help') {
      opts.help = true;
    } else if (arg === '--paused' || arg === '--force') {
      opts[arg.slice(2)] = true;
    } else if (arg in valued) {
      if (i + 1 >= argv.length) throw new UsageError(`${arg} needs a value`);
      opts[valued[arg]] = argv[++i];
    } else if (arg.startsWith('--')) {
      throw new UsageError(`unknown option ${arg}`);
    } else {
      positional.push(arg);
    }
  }
  opts.timeout = Number(opts.timeout);
  if (!(opts.timeout > 0)) throw new UsageError('--timeout must be a number of seconds > 0');
  if (!/^\d+$/.test(opts.memory)) throw new UsageError('--memory must be a number of bytes');
  if (!/^\d+$/.test(opts.vcpus)) throw new UsageError('--vcpus must be a whole number');
  if (!opts.identity) throw new UsageError('--identity must name a client certificate');
  [opts.command, ...opts.args] = positional;
  return opts;
}

// -- the xcp.v1 services, from ../../protos ------------------------------------

function loadServices(protosDir) {
  const files = ['host_service', 'vm_service', 'errors'].map((f) => `xcp/v1/${f}.proto`);
  const definition = protoLoader.loadSync(files, {
    includeDirs: [protosDir],
    keepCase: true, // field names as in the .proto: name_label, power_state
    longs: String, // int64 memory as a string, as proto3 JSON does
    enums: String, // RUNNING, not 2
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).xcp.v1;
}

// -- the connection: mutual TLS with the pool's certificates, or plaintext --------

// Verify the master by the name in its certificate, whatever address we dial.
const VERIFY_MASTER = { 'grpc.ssl_target_name_override': MASTER_NAME,
  'grpc.default_authority': MASTER_NAME };

function readFile(file) {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new UsageError(`cannot read ${file}: ${e.message}`);
  }
}

// Several masters (HOST:PORT,HOST:PORT,...): one channel over all of them
// (grpc-js's ipv4: list and pick_first), so a master that refuses is skipped
// and the next one tried; any master answers (followers pass calls on).
function masterTarget(master) {
  const parts = master.split(',').map((p) => p.trim()).filter((p) => p);
  if (parts.length <= 1) return master;
  const ips = parts.map((p) => {
    const host = p.slice(0, p.lastIndexOf(':'));
    return host === 'localhost' ? `127.0.0.1${p.slice(p.lastIndexOf(':'))}` : p;
  });
  return `ipv4:${ips.join(',')}`;
}

// {credentials, options, metadata} for the channels to the master.
function connection(opts) {
  const metadata = new grpc.Metadata();
  if (opts.authToken) metadata.set('authorization', `Bearer ${opts.authToken}`);
  if (opts.caCert) {
    return { credentials: grpc.credentials.createSsl(readFile(opts.caCert)),
      options: VERIFY_MASTER, metadata };
  }
  if (!opts.tlsDir) {
    return { credentials: grpc.credentials.createInsecure(), options: {}, metadata };
  }
  const dir = path.resolve(opts.tlsDir);
  const files = {
    ca: path.join(dir, 'ca.pem'),
    cert: path.join(dir, `client-${opts.identity}.pem`),
    key: path.join(dir, `client-${opts.identity}-key.pem`),
  };
  if (!fs.existsSync(files.ca)) {
    throw new UsageError(`no pool CA (ca.pem) in ${opts.tlsDir} (see xcp pool-init)`);
  }
  if (!fs.existsSync(files.cert) || !fs.existsSync(files.key)) {
    throw new UsageError(`no certificate for identity '${opts.identity}' in ${opts.tlsDir} ` +
      '(see xcp pool-init, xcp cert-issue)');
  }
  const credentials = grpc.credentials.createSsl(readFile(files.ca), readFile(files.key),
    readFile(files.cert));
  return { credentials, options: VERIFY_MASTER, metadata };
}

// -- google.rpc.Status / ErrorInfo, from googleapis-common-protos ----------------

function findGoogleProtos(given) {
  const hasStatus = (dir) => fs.existsSync(path.join(dir, 'google', 'rpc', 'status.proto'));
  if (given) {
    if (!hasStatus(given)) throw new UsageError(`no google/rpc/status.proto under ${given}`);
    return given;
  }
  // google.rpc is a namespace package (no __file__): ask a module inside it.
  const script = 'import os, google.rpc.status_pb2 as s; ' +
    'print(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(s.__file__)))))';
  const candidates = [process.env.XCP_PYTHON,
    path.resolve(__dirname, '..', '..', '.venv', 'bin', 'python'), 'python3'];
  for (const python of candidates.filter(Boolean)) {
    try {
      const dir = execFileSync(python, ['-c', script],
        { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 20000 }).trim();
      if (hasStatus(dir)) return dir;
    } catch (e) {
      // try the next interpreter
    }
  }
  throw new UsageError('cannot find google/rpc/status.proto: install googleapis-common-protos ' +
    'or pass --google-protos DIR (the directory that holds google/rpc/)');
}

function loadStatusTypes(includeDir) {
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) =>
    (path.isAbsolute(target) ? target : path.join(includeDir, target));
  root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'],
    { keepCase: true });
  return {
    Status: root.lookupType('google.rpc.Status'),
    ErrorInfo: root.lookupType('google.rpc.ErrorInfo'),
  };
}

// The xcp ErrorInfo of a failed call, or null: decode the google.rpc.Status in
// the grpc-status-details-bin trailer and find the Any holding an ErrorInfo.
function errorInfo(err, types) {
  const values = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  if (!values || values.length === 0) return null;
  const status = types.Status.decode(values[0]);
  for (const detail of status.details || []) {
    if (detail.type_url === ERROR_INFO_TYPE) {
      const info = types.ErrorInfo.decode(detail.value);
      if (info.domain === DOMAIN) return info;
    }
  }
  return null;
}

function describeError(err, opts, types) {
  const info = errorInfo(err, types);
  if (info) {
    const params = Object.keys(info.metadata || {}).sort()
      .map((k) => `${k}=${info.metadata[k]}`).join(' ');
    const code = HOST_UNREACHABLE.has(info.reason) ? EXIT.HOST_UNREACHABLE : EXIT.API_ERROR;
    return { code, line: `error: ${info.reason}${params ? ' ' + params : ''}` };
  }
  if (err.code === grpc.status.UNAVAILABLE || err.code === grpc.status.DEADLINE_EXCEEDED) {
    const details = String(err.details || '');
    // grpc-js: "No connection established. Last error: Failed to connect
    // (2026-...Z). Resolution note: " -> its gist, without time and note.
    const gist = /ECONNREFUSED/.test(details) ? 'connection refused' : details.split('\n')[0]
      .replace(/\s*\(\d{4}-\d\d-\d\dT[^)]*\)/g, '').replace(/\s*Resolution note:.*$/, '').trim();
    return { code: EXIT.MASTER_UNREACHABLE,
      line: `error: cannot reach the master at ${opts.master}: ${gist}` };
  }
  const name = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) || err.code;
  return { code: EXIT.API_ERROR, line: `error: ${name}: ${err.details || err.message}` };
}

// -- calls --------------------------------------------------------------------------

// One call of clients[service] (hosts or vms), with the connection's metadata.
function unary(clients, service, method, request, timeoutS) {
  const deadline = new Date(Date.now() + timeoutS * 1000);
  return new Promise((resolve, reject) => {
    clients[service][method](request, clients.metadata.clone(), { deadline },
      (err, response) => (err ? reject(err) : resolve(response)));
  });
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

// A uuid as given, or the uuid of the one host / VM with that name_label.
async function resolve(clients, kind, ref, timeoutS) {
  if (!ref || UUID.test(ref)) return ref;
  const found = kind === 'host'
    ? (await unary(clients, 'hosts', 'ListHosts', {}, timeoutS)).hosts
    : (await unary(clients, 'vms', 'ListVMs', {}, timeoutS)).vms;
  const matches = found.filter((o) => o.name_label === ref).map((o) => o.uuid);
  if (matches.length !== 1) {
    throw new NameError(`${matches.length ? 'several' : 'no'} ${kind}s named ${ref}: use a uuid`);
  }
  return matches[0];
}

// Each command: the service, the method, its positional arguments (kind
// names how a name_label resolves) and the request.
const COMMANDS = {
  'list-hosts': { service: 'hosts', method: 'ListHosts', args: [], request: () => ({}) },
  'get-vm': { service: 'vms', method: 'GetVM', args: ['vm'], request: (o, [vm]) => ({ uuid: vm }) },
  'create-vm': { service: 'vms', method: 'CreateVM', args: ['name'],
    request: (o, [name]) => ({ name_label: name, memory: o.memory, vcpus: o.vcpus }) },
  'start-vm': { service: 'vms', method: 'StartVM', args: ['vm'],
    request: (o, [vm], host) => ({ uuid: vm, host, paused: o.paused }) },
  'shutdown-vm': { service: 'vms', method: 'ShutdownVM', args: ['vm'],
    request: (o, [vm]) => ({ uuid: vm, force: o.force }) },
  'disable-host': { service: 'hosts', method: 'DisableHost', args: ['host'],
    request: (o, [host]) => ({ uuid: host }) },
  'enable-host': { service: 'hosts', method: 'EnableHost', args: ['host'],
    request: (o, [host]) => ({ uuid: host }) },
};

async function main(argv) {
  let opts;
  let types;
  let command;
  let conn;
  try {
    opts = parseArgs(argv);
    if (opts.help) {
      process.stdout.write(USAGE + '\n');
      return EXIT.OK;
    }
    command = COMMANDS[opts.command];
    if (!command) throw new UsageError(opts.command ? `unknown command ${opts.command}` : 'no command');
    if (opts.args.length !== command.args.length) {
      throw new UsageError(`${opts.command} takes ${command.args.length} argument(s)`);
    }
    types = loadStatusTypes(findGoogleProtos(opts.googleProtos));
    conn = connection(opts);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    process.stderr.write(`xcp-client: ${e.message}\n${USAGE}\n`);
    return EXIT.USAGE;
  }
  const v1 = loadServices(opts.protos);
  const target = masterTarget(opts.master);
  const clients = {
    hosts: new v1.HostService(target, conn.credentials, conn.options),
    vms: new v1.VMService(target, conn.credentials, conn.options),
    metadata: conn.metadata,
  };
  try {
    const args = [];
    for (const [i, kind] of command.args.entries()) {
      args.push(kind === 'name' ? opts.args[i]
        : await resolve(clients, kind, opts.args[i], opts.timeout));
    }
    const host = await resolve(clients, 'host', opts.host, opts.timeout);
    const response = await unary(clients, command.service, command.method,
      command.request(opts, args, host), opts.timeout);
    process.stdout.write(JSON.stringify(response, null, 2) + '\n');
    return EXIT.OK;
  } catch (err) {
    if (err instanceof NameError) {
      process.stderr.write(`error: ${err.message}\n`);
      return EXIT.API_ERROR;
    }
    if (err.code === undefined) throw err;
    const { code, line } = describeError(err, opts, types);
    process.stderr.write(line + '\n');
    return code;
  } finally {
    clients.hosts.close();
    clients.vms.close();
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => { process.exitCode = code; },
    (err) => { process.stderr.write(`xcp-client: ${err.stack || err}\n`); process.exitCode = 1; },
  );
}

module.exports = { main, errorInfo, loadStatusTypes, findGoogleProtos, parseArgs, connection };
