//! Which CPUs the shards run on: `--cores N` and `--numa-node N`.

use anyhow::{bail, Context, Result};

/// Parses a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(list: &str) -> Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse()?, b.parse()?);
                if a > b {
                    bail!("bad CPU range {part}");
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse()?),
        }
    }
    Ok(cpus)
}

/// CPUs this process may run on (its affinity mask).
fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: sched_getaffinity fills the zeroed cpu_set_t we pass with its exact size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("read CPU affinity");
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// The CPUs to run one shard each on.
pub fn select(cores: Option<usize>, numa_node: Option<usize>) -> Result<Vec<usize>> {
    let mut cpus = allowed_cpus()?;
    if let Some(node) = numa_node {
        let path = format!("/sys/devices/system/node/node{node}/cpulist");
        let list = std::fs::read_to_string(&path)
            .with_context(|| format!("read NUMA node {node} CPUs ({path})"))?;
        let on_node = parse_cpu_list(&list)?;
        cpus.retain(|c| on_node.contains(c));
        if cpus.is_empty() {
            bail!("NUMA node {node} has no CPUs this process may use");
        }
    }
    if let Some(n) = cores {
        if n == 0 || n > cpus.len() {
            bail!("--cores {n}: only {} usable CPUs ({cpus:?})", cpus.len());
        }
        cpus.truncate(n);
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_cpu_lists() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpu_list("5").unwrap(), vec![5]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }

    #[test]
    fn selects_within_affinity() {
        let all = select(None, None).unwrap();
        assert!(!all.is_empty());
        assert_eq!(select(Some(1), None).unwrap(), vec![all[0]]);
        assert!(select(Some(all.len() + 1), None).is_err());
        if std::path::Path::new("/sys/devices/system/node/node0").exists() {
            let node0 = select(None, Some(0)).unwrap();
            assert!(!node0.is_empty() && node0.iter().all(|c| all.contains(c)));
        }
        assert!(select(None, Some(4096)).is_err());
    }
}
