// A stand-in for Nymbl's document API on Node's http server, uploads parsed by busboy as multer
// parses them: just the endpoints ingestd uses (token, upload, list, $value) as
// shared/api/nymbl-documents.txt describes them, plus /_test/ routes for the test to look and to
// make the next uploads answer late. Loopback only; prints its port, stops when stdin closes.
// Options (argv[2], JSON): {"preservePath": bool} is busboy's own option (multer's default: false).
'use strict';

const crypto = require('crypto');
const http = require('http');
const busboy = require('busboy');

const options = JSON.parse(process.argv[2] || '{}');
const CLIENT_ID = 'ingestd-test';
const CLIENT_SECRET = 'not a secret: +%:åäö';
const API_KEY = 'test-api-key';
const docs = [];
const tokens = new Set();
const late = { count: 0, ms: 0 };

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function metadata(doc) {
  const { content, ...rest } = doc;
  return rest;
}

// RFC 6749 2.3.1: id and secret are form-urlencoded before they are joined for HTTP Basic.
function formDecoded(text) {
  return decodeURIComponent(text.replace(/\+/g, ' '));
}

function token(req, res, body) {
  const form = new URLSearchParams(body);
  const [scheme, value] = (req.headers.authorization || '').split(' ');
  let id = form.get('client_id');
  let secret = form.get('client_secret');
  if (scheme === 'Basic') {
    const pair = Buffer.from(value || '', 'base64').toString('utf8');
    const colon = pair.indexOf(':');
    try {
      id = formDecoded(pair.slice(0, colon));
      secret = formDecoded(pair.slice(colon + 1));
    } catch (e) {
      return send(res, 401, { error: 'invalid_client' });
    }
  }
  if (form.get('grant_type') !== 'client_credentials') return send(res, 400, { error: 'unsupported_grant_type' });
  if (id !== CLIENT_ID || secret !== CLIENT_SECRET) return send(res, 401, { error: 'invalid_client' });
  const issued = crypto.randomBytes(16).toString('hex');
  tokens.add(issued);
  send(res, 200, { access_token: issued, token_type: 'Bearer', expires_in: 3600 });
}

function authorised(req) {
  const [scheme, value] = (req.headers.authorization || '').split(' ');
  return scheme === 'Bearer' && tokens.has(value) && req.headers['x-api-key'] === API_KEY;
}

function upload(req, res, patient) {
  let parser;
  try {
    parser = busboy({ headers: req.headers, preservePath: Boolean(options.preservePath) });
  } catch (e) {
    return send(res, 400, { error: 'not multipart/form-data' });
  }
  const fields = {};
  const chunks = [];
  let file = null;
  parser.on('file', (name, stream, info) => {
    if (name !== 'file' || file !== null) return stream.resume();
    file = info;
    stream.on('data', (chunk) => chunks.push(chunk));
  });
  parser.on('field', (name, value) => { fields[name] = value; });
  parser.on('error', () => send(res, 400, { error: 'malformed multipart body' }));
  parser.on('close', () => {
    if (file === null || !file.filename) return send(res, 400, { error: 'missing required field: file' });
    const content = Buffer.concat(chunks);
    const doc = {
      id: `doc-${docs.length + 1}`,
      patient_id: patient,
      file_name: file.filename,
      content_type: file.mimeType,
      file_size_bytes: content.length,
      document_type: fields.document_type,
      description: fields.description,
      uploaded_at: new Date().toISOString(),
      content,
    };
    docs.push(doc);
    const answer = () => send(res, 201, metadata(doc));
    if (late.count > 0) {
      late.count -= 1;
      setTimeout(answer, late.ms);  // stored now, answered after the client gave up
    } else {
      answer();
    }
  });
  req.pipe(parser);
}

function list(res, patient, query) {
  const mine = docs.filter((d) => d.patient_id === patient).map(metadata);
  // $filter is not implemented: this server lists everything, as some do.
  const skip = Number(query.get('$skip') || 0);
  const top = query.has('$top') ? Number(query.get('$top')) : mine.length;
  send(res, 200, { value: mine.slice(skip, skip + top) });
}

function value(res, patient, id) {
  const doc = docs.find((d) => d.patient_id === patient && d.id === id);
  if (!doc) return send(res, 404, { error: 'not found' });
  res.writeHead(200, { 'Content-Type': doc.content_type, 'Content-Length': doc.content.length });
  res.end(doc.content);
}

function testRoutes(req, res, path, body) {
  if (path === '/_test/documents') {
    return send(res, 200, docs.map((d) => ({
      ...metadata(d), sha256: crypto.createHash('sha256').update(d.content).digest('hex'),
    })));
  }
  if (path === '/_test/late' && req.method === 'POST') {
    Object.assign(late, JSON.parse(body));
    return send(res, 200, late);
  }
  return send(res, 404, { error: 'not found' });
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  const path = decodeURIComponent(url.pathname);
  const documents = /^\/Patients\(([0-9]+)\)\/Documents$/.exec(path);
  const content = /^\/Patients\(([0-9]+)\)\/Documents\(([^)]+)\)\/\$value$/.exec(path);
  if (documents && req.method === 'POST') {
    if (!authorised(req)) return send(res, 401, { error: 'unauthorized' });
    return upload(req, res, documents[1]);
  }
  const parts = [];
  req.on('data', (chunk) => parts.push(chunk));
  req.on('end', () => {
    const body = Buffer.concat(parts).toString('utf8');
    if (path === '/oauth/token' && req.method === 'POST') return token(req, res, body);
    if (path.startsWith('/_test/')) return testRoutes(req, res, path, body);
    if (!authorised(req)) return send(res, 401, { error: 'unauthorized' });
    if (documents && req.method === 'GET') return list(res, documents[1], url.searchParams);
    if (content && req.method === 'GET') return value(res, content[1], content[2]);
    return send(res, 404, { error: 'not found' });
  });
});

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${server.address().port}\n`);
});
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
