//! Users of this machine's RabbitMQ and Redis that a test makes with the rights it chooses (a
//! secret-redaction check needs known passwords, a least-rights check needs narrow ones), all
//! removed when the set is dropped, so a failed test leaves no account behind.

use std::process::Command;

/// The Redis every test shares.
const REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// Runs `rabbitmqctl` with `args`; panics with its message if it fails.
pub fn rabbitmqctl(args: &[&str]) {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (RabbitMQ is installed on this machine)");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The users a test made; dropping it deletes them.
#[derive(Default)]
pub struct ServiceUsers {
    rabbit: Vec<String>,
    redis: Vec<String>,
}

impl ServiceUsers {
    /// Adds RabbitMQ user `user` with `password` and the `[configure, write, read]` permission
    /// patterns on the default vhost.
    pub fn add_rabbit(&mut self, user: &str, password: &str, permissions: [&str; 3]) {
        rabbitmqctl(&["add_user", user, password]);
        self.rabbit.push(user.to_owned());
        let [configure, write, read] = permissions;
        rabbitmqctl(&["set_permissions", "-p", "/", user, configure, write, read]);
    }

    /// Adds Redis ACL user `user` with `password` and `rules` (`~pattern`, `+@category`, …),
    /// starting from no rights at all.
    pub fn add_redis(&mut self, user: &str, password: &str, rules: &[&str]) {
        let mut redis = redis::Client::open(REDIS_URL)
            .and_then(|client| client.get_connection())
            .expect("Redis answers");
        let mut command = redis::cmd("ACL");
        command.arg("SETUSER").arg(user).arg("reset").arg("on");
        command.arg(format!(">{password}")).arg(rules);
        command
            .exec(&mut redis)
            .expect("ACL SETUSER takes the rules");
        self.redis.push(user.to_owned());
    }
}

impl Drop for ServiceUsers {
    fn drop(&mut self) {
        for user in &self.rabbit {
            let _ = Command::new("rabbitmqctl")
                .args(["delete_user", user])
                .output();
        }
        if let Ok(mut redis) = redis::Client::open(REDIS_URL).and_then(|c| c.get_connection()) {
            for user in &self.redis {
                let _ = redis::cmd("ACL").arg("DELUSER").arg(user).exec(&mut redis);
            }
        }
    }
}
