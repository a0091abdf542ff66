#!/usr/bin/env node
// A real Socket.IO server (4.x or 2.x from ./node_modules) for the socketio probe's tests.
//
//   node sio_server.js --major 4|2 --host 127.0.0.1 --port 0 [--path /x/] [--namespace /admin]
//                      [--token secret] [--no-websocket] [--allow-eio3]
//                      [--ping-interval ms] [--ping-timeout ms] [--connect-delay ms]
//
// Prints `ready host:port` (the bound port) once listening, then one line per session event
// so tests can prove what the server saw:
//   connect <nsp> <socket id>
//   disconnect <nsp> <reason>        (Socket.IO: "client namespace disconnect", "transport close", ...)
//   engine-close <reason>            (Engine.IO: "transport close", "forced close", ...)
//   connect-error <nsp> <message>    (a namespace middleware refused the token)
// Exits 0 on SIGTERM/SIGINT.
"use strict";

const http = require("http");

function parseArgs(argv) {
  const opts = {
    major: 4,
    host: "127.0.0.1",
    port: 0,
    path: "/socket.io/",
    namespace: "/",
    token: null,
    websocket: true,
    allowEIO3: false,
    pingInterval: null,
    pingTimeout: null,
    connectDelay: 0,
  };
  for (let i = 2; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`);
      return argv[++i];
    };
    switch (arg) {
      case "--major": opts.major = Number(value()); break;
      case "--host": opts.host = value(); break;
      case "--port": opts.port = Number(value()); break;
      case "--path": opts.path = value(); break;
      case "--namespace": opts.namespace = value(); break;
      case "--token": opts.token = value(); break;
      case "--no-websocket": opts.websocket = false; break;
      case "--allow-eio3": opts.allowEIO3 = true; break;
      case "--ping-interval": opts.pingInterval = Number(value()); break;
      case "--ping-timeout": opts.pingTimeout = Number(value()); break;
      case "--connect-delay": opts.connectDelay = Number(value()); break;
      default: throw new Error(`unknown argument ${arg}`);
    }
  }
  if (opts.major !== 4 && opts.major !== 2) throw new Error("--major must be 4 or 2");
  return opts;
}

function say(line) {
  process.stdout.write(line + "\n");
}

function main() {
  const opts = parseArgs(process.argv);
  // Anything outside the Socket.IO path is a plain 404, like an app server with no such route.
  const server = http.createServer((req, res) => {
    res.writeHead(404, { "Content-Type": "text/plain" });
    res.end("Not Found");
  });
  const transports = opts.websocket ? ["polling", "websocket"] : ["polling"];
  const timing = {};
  if (opts.pingInterval !== null) timing.pingInterval = opts.pingInterval;
  if (opts.pingTimeout !== null) timing.pingTimeout = opts.pingTimeout;
  let io;
  if (opts.major === 4) {
    const { Server } = require("socket.io-v4");
    io = new Server(server, {
      path: opts.path,
      transports,
      allowEIO3: opts.allowEIO3,
      serveClient: false,
      ...timing,
    });
  } else {
    const ioV2 = require("socket.io-v2");
    io = ioV2(server, { path: opts.path, transports, serveClient: false, ...timing });
  }

  io.engine.on("connection", (conn) => {
    conn.on("close", (reason) => say(`engine-close ${reason}`));
  });

  const nsp = io.of(opts.namespace);
  if (opts.connectDelay > 0) {
    // A slow namespace middleware (a token lookup, say): the server keeps pinging meanwhile.
    nsp.use((socket, next) => setTimeout(next, opts.connectDelay));
  }
  if (opts.token !== null) {
    nsp.use((socket, next) => {
      // Socket.IO 3+ clients send the token in the CONNECT packet (handshake.auth); 2.x
      // clients (and 2.x-compatible ones talking to 4.x with allowEIO3) in the query string.
      const auth = socket.handshake.auth || {};
      const given = auth.token !== undefined ? auth.token : socket.handshake.query.token;
      if (given === opts.token) return next();
      say(`connect-error ${nsp.name} Not authorized`);
      next(new Error("Not authorized"));
    });
  }
  nsp.on("connection", (socket) => {
    say(`connect ${nsp.name} ${socket.id}`);
    socket.on("disconnect", (reason) => say(`disconnect ${nsp.name} ${reason}`));
    socket.on("echo", (data, ack) => {
      if (typeof ack === "function") ack(data);
    });
  });

  const stop = () => {
    io.close();
    server.close();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);

  server.listen(opts.port, opts.host, () => {
    const addr = server.address();
    const host = addr.family === "IPv6" || addr.family === 6 ? `[${addr.address}]` : addr.address;
    say(`ready ${host}:${addr.port}`);
  });
}

main();
