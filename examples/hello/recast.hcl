# The example service: a static HTTP server in a scratch image, three instances behind a route,
# shipped by canary with automatic analysis. `scripts/build-hello` puts the binary in dist/.

image "hello" {
  from = "scratch"

  copy {
    src  = "dist/hello"
    dest = "/bin/hello"
    mode = "0555"
  }

  env     = { GREETING = "hello" }
  workdir = "/"
  user    = "65534:65534"
  cmd     = ["/bin/hello"]
  labels  = { "org.opencontainers.image.title" = "hello" }

  test {
    http {
      path          = "/healthz"
      expect_status = 200
    }
    http {
      path        = "/"
      expect_body = "hello"
    }
    command = ["/bin/hello", "--self-check"]
  }
}

service "hello" {
  image     = image.hello
  instances = 3
  port      = 8080
  env       = { MESSAGE = "v1" }

  health {
    http                = "/healthz"
    interval            = "1s"
    timeout             = "500ms"
    healthy_threshold   = 1
    unhealthy_threshold = 3
  }

  volume "data" { mount = "/data" }
  max_age = "24h"
  memory  = "64MiB"

  rollout {
    strategy = "canary"
    step {
      weight = 10
      pause  = "10s"
    }
    step {
      weight = 50
      pause  = "10s"
    }
    analysis {
      interval        = "5s"
      min_requests    = 50
      max_error_rate  = 0.01
      max_p99_latency = "300ms"
    }
    auto_rollback     = true
    progress_deadline = "5m"
  }
}

route "web" {
  listen  = "127.0.0.1:8080"
  service = service.hello
}

guard {
  scan_interval = "30s"
  on_drift      = "replace"
}
